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


def kd_losses(run_dir, label: str = "token_kd") -> list[float]:
    """The `loss/kd` values a run logged for one student, in order."""
    import json

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss/kd"] for r in rows if r.get("phase") == label and "loss/kd" in r]


def assert_same_token_kd_runs(runs_dir, a: str = "local", b: str = "served") -> None:
    """Two runs of the token_kd student logged the same KD losses and saved the same weights."""
    import pytest
    import torch
    from safetensors.torch import load_file

    la, lb = kd_losses(runs_dir / a), kd_losses(runs_dir / b)
    assert len(la) == 3 and la[0] > 0
    assert la == pytest.approx(lb, rel=1e-5, abs=1e-6)
    wa = load_file(str(runs_dir / a / "students" / "token_kd" / "model.safetensors"))
    wb = load_file(str(runs_dir / b / "students" / "token_kd" / "model.safetensors"))
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5), k

