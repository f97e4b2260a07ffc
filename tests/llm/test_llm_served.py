"""token_kd with targets from a served teacher gives the losses and weights of the in-process teacher."""
from __future__ import annotations

import threading

import pytest

pytest.importorskip("transformers")
from llm_helpers import assert_same_token_kd_runs, corpus, tiny_lm  # noqa: E402

import distill  # noqa: E402


def test_served_teacher_losses_equal_in_process(tmp_path, tiny_tok):
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
    assert_same_token_kd_runs(tmp_path / "runs")
    assert local["students"]["token_kd"]["bits_per_byte"] == pytest.approx(served["students"]["token_kd"]["bits_per_byte"], rel=1e-4)


def test_serve_teacher_command_answers_with_the_chunked_top_k(tmp_path, monkeypatch):
    """`distill serve-teacher` loads the folder and serves it with the language-model family's
    top-k (log-probs a block of positions at a time), not the full-logits default."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from typer.testing import CliRunner

    import distill.serve
    from distill.cli.main import app
    from distill.families.llm.served import head_topk_logprobs

    GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=1, n_head=2)).save_pretrained(tmp_path)
    seen = {}

    class Stopped:
        server_address = ("127.0.0.1", 0)

        def serve_forever(self):
            raise KeyboardInterrupt

        def server_close(self):
            seen["closed"] = True

    def fake_make_server(teacher, *args, **kw):
        seen.update(kw, teacher=teacher)
        return Stopped()

    monkeypatch.setattr(distill.serve, "make_server", fake_make_server)
    out = CliRunner().invoke(app, ["serve-teacher", str(tmp_path), "--device", "cpu"])
    assert out.exit_code == 0, out.output
    assert seen["topk"] is head_topk_logprobs and seen["closed"]
    assert seen["teacher"].module.config.vocab_size == 50
