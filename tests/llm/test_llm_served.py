"""token_kd with targets from a served teacher gives the losses and weights of the in-process teacher."""
from __future__ import annotations

import json
import threading

import pytest

pytest.importorskip("transformers")
from llm_helpers import corpus, tiny_lm  # noqa: E402

import distill  # noqa: E402


def _kd_losses(run_dir, label="token_kd"):
    return [json.loads(l)["loss/kd"] for l in (run_dir / "metrics.jsonl").read_text().splitlines()
            if json.loads(l).get("phase") == label and "loss/kd" in l]


def test_served_teacher_losses_equal_in_process(tmp_path, tiny_tok):
    import torch
    from safetensors.torch import load_file

    from distill.families.llm.models import load_causal_lm
    from distill.serve import make_server
    from distill.teacher import Teacher

    teacher_dir = tmp_path / "teacher"
    tiny_lm("llama", len(tiny_tok), hidden=24, seed=3).save_pretrained(teacher_dir)
    tiny_tok.save_pretrained(teacher_dir)
    vocab = len(tiny_tok)
    server = make_server(Teacher(load_causal_lm(str(teacher_dir))), "127.0.0.1", 0, max_k=vocab)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    text = tmp_path / "train.txt"
    text.write_text("\n\n".join(corpus(24)))
    base = {"family": "llm", "output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"),
            "teacher": {"path": str(teacher_dir)},
            "student": {"arch": "llama", "hidden_size": 16, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1},
            "data": {"source": "text", "path": str(text), "seq_len": 48, "batch_size": 4, "prompt_tokens": 4,
                     "pack": True},
            "train": {"epochs": 1, "max_steps": 3, "optimizer": {"name": "sgd", "lr": 0.5}},
            "engine": {"device": "cpu", "progress": False, "log_every": 1},
            "eval": {"samples": 0}, "methods": [{"name": "token_kd", "params": {"temperature": 2.0}}]}
    try:
        local = distill.run(dict(base, name="local"), log=lambda m: None)
        served = distill.run(dict(base, name="served", teacher={"path": str(teacher_dir), "url": url,
                                                                 "served_top_k": vocab}), log=lambda m: None)
    finally:
        server.shutdown()
        server.server_close()
    a, b = _kd_losses(tmp_path / "runs" / "local"), _kd_losses(tmp_path / "runs" / "served")
    assert len(a) == 3 and a[0] > 0
    assert a == pytest.approx(b, rel=1e-5, abs=1e-6)
    wa = load_file(str(tmp_path / "runs" / "local" / "students" / "token_kd" / "model.safetensors"))
    wb = load_file(str(tmp_path / "runs" / "served" / "students" / "token_kd" / "model.safetensors"))
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5), k
    assert local["students"]["token_kd"]["bits_per_byte"] == pytest.approx(served["students"]["token_kd"]["bits_per_byte"], rel=1e-4)
