"""Tiny locally created tokenizers and causal LMs for the llm family's tests (no network)."""
from __future__ import annotations

import random


WORDS = ("the cat dog sat on a mat and ran to park sun was big red ball girl boy saw "
         "played with friend happy day one time upon once little tree").split()


def corpus(n: int = 200, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 20))) + "." for _ in range(n)]



def tiny_lm(arch: str, vocab: int, *, hidden: int = 16, layers: int = 2, seed: int = 0, pad_vocab_to: int = 1):
    import torch

    from distill.families.llm.models import build_student

    torch.manual_seed(seed)
    return build_student(arch, vocab, 1, 2, hidden_size=hidden, num_layers=layers, num_heads=2, num_kv_heads=1 if arch == "llama" else None,
                         intermediate_size=2 * hidden, max_positions=128, pad_vocab_to=pad_vocab_to)
