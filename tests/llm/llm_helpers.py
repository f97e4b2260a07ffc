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
    assert la == pytest.approx(lb, rel=1e-5, abs=1.5e-6)  # the log rounds to 6 decimals: one unit apart at most
    wa = load_file(str(runs_dir / a / "students" / "token_kd" / "model.safetensors"))
    wb = load_file(str(runs_dir / b / "students" / "token_kd" / "model.safetensors"))
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5), k



def cached_loss(cache, student, batch, kind: str = "forward_kl", temperature: float = 2.0):
    """The summed divergence of `student` on `batch` against the teacher read from `cache`."""
    from distill.families.llm.cache import cached_divergence_sum
    from distill.families.llm.data import IGNORE
    from distill.families.llm.models import head_of, hidden_states

    mask = batch["labels"] != IGNORE
    w, b = head_of(student)
    return cached_divergence_sum(hidden_states(student, batch), w, b, cache.lookup(batch), mask, kind,
                                 vocab_size=cache.meta["vocab_size"], temperature=temperature, chunk_size=7)


def teacher_and_text(tmp_path, tok, docs: int = 30):
    """(folder, text file): a tiny Llama teacher saved with `tok`, and `docs` corpus documents."""
    tdir = tmp_path / "teacher"
    tiny_lm("llama", len(tok), hidden=24, seed=3).save_pretrained(tdir)
    tok.save_pretrained(tdir)
    text = tmp_path / "train.txt"
    text.write_text("\n\n".join(corpus(docs)))
    return tdir, text


def cache_run_recipe(tmp_path, tdir, text, **teacher) -> dict:
    """A two-step token_kd run at T = 2 on `text`, with the teacher keys given (e.g. cache_top_k)."""
    return {"name": "t", "family": "llm", "output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"),
            "teacher": {"path": str(tdir), **teacher},
            "student": {"arch": "gpt2", "hidden_size": 16, "num_layers": 1, "num_heads": 2, "pad_vocab_to": 64},
            "data": {"source": "text", "path": str(text), "seq_len": 48, "batch_size": 4, "eval_batch_size": 8},
            "train": {"epochs": 1, "max_steps": 2}, "engine": {"device": "cpu", "progress": False},
            "eval": {"samples": 0}, "methods": [{"name": "token_kd", "params": {"temperature": 2.0}}]}
