"""teacher.generation: transformers' generate by default, vLLM when asked (or on CUDA with vllm
installed). vLLM is not installable here, so its glue is checked against a stand-in package with
vLLM's interface (LLM, SamplingParams, generate over {"prompt_token_ids": ...} prompts) that runs
transformers' greedy generate underneath: greedy continuations must equal the hf backend's."""
from __future__ import annotations

import json
import textwrap

import pytest

pytest.importorskip("transformers")
from llm_helpers import corpus, kd_losses, tiny_lm  # noqa: E402

import distill  # noqa: E402
from distill.errors import ConfigError  # noqa: E402
from distill.families.llm.generation import resolve_backend  # noqa: E402

FAKE_VLLM = textwrap.dedent('''
    """A stand-in for vLLM's offline interface, recording what it is given."""
    import torch
    from transformers import AutoModelForCausalLM

    CALLS = []


    class SamplingParams:
        def __init__(self, **kw):
            self.kw = kw


    class _Completion:
        def __init__(self, ids, reason):
            self.token_ids, self.finish_reason = ids, reason


    class _Request:
        def __init__(self, c):
            self.outputs = [c]


    class LLM:
        def __init__(self, model, **kw):
            CALLS.append(("LLM", model, kw))
            self.model = AutoModelForCausalLM.from_pretrained(model).eval()

        def generate(self, prompts, params, use_tqdm=True):
            CALLS.append(("generate", len(prompts), params.kw))
            assert params.kw["temperature"] == 0.0
            stop = set(params.kw.get("stop_token_ids") or [])
            out = []
            for p in prompts:
                ids = torch.tensor([p["prompt_token_ids"]])
                with torch.no_grad():
                    g = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                            max_new_tokens=params.kw["max_tokens"], pad_token_id=0)[0, ids.shape[1]:]
                g = g.tolist()
                hit = next((i for i, t in enumerate(g) if t in stop), None)
                # vLLM leaves the stop token out of token_ids when it stops on it
                out.append(_Request(_Completion(g[:hit], "stop") if hit is not None else _Completion(g, "length")))
            return out
''')


@pytest.fixture
def fake_vllm(tmp_path, monkeypatch):
    (tmp_path / "fakes").mkdir()
    (tmp_path / "fakes" / "vllm.py").write_text(FAKE_VLLM)
    monkeypatch.syspath_prepend(str(tmp_path / "fakes"))
    import importlib
    import sys

    sys.modules.pop("vllm", None)
    mod = importlib.import_module("vllm")
    yield mod
    sys.modules.pop("vllm", None)


def test_backend_choice(fake_vllm, monkeypatch):
    import torch

    assert resolve_backend("hf", "/t") == "hf"
    assert resolve_backend("vllm", "/t") == "vllm"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_backend("auto", "/t") == "hf"       # vllm installed, but no CUDA device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_backend("auto", "/t") == "vllm"
    assert resolve_backend("auto", None) == "hf"       # a served teacher: no folder for vLLM
    with pytest.raises(ConfigError, match=r"teacher.generation: vllm loads the teacher from its folder"):
        resolve_backend("vllm", None)


def test_vllm_not_installed_is_a_clear_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(ConfigError, match=r"teacher.generation: vllm is not installed"):
        resolve_backend("vllm", "/t")


def test_seq_kd_through_vllm_equals_hf_at_temperature_0(tmp_path, tiny_tok, fake_vllm):
    tdir = tmp_path / "teacher"
    tiny_lm("llama", len(tiny_tok), hidden=24, seed=3).save_pretrained(tdir)
    tiny_tok.save_pretrained(tdir)
    p = tmp_path / "d.jsonl"
    p.write_text("".join(json.dumps({"prompt": a[:30], "response": b[:30]}) + "\n"
                         for a, b in zip(corpus(24, seed=1), corpus(24, seed=2))))

    def recipe(name, backend):
        return {"name": name, "family": "llm", "output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "c"),
                "teacher": {"path": str(tdir), "generation": backend},
                "student": {"arch": "gpt2", "hidden_size": 16, "num_layers": 1, "num_heads": 2, "pad_vocab_to": 64},
                "data": {"source": "jsonl", "path": str(p), "seq_len": 64, "batch_size": 4, "eval_batch_size": 8},
                "train": {"epochs": 1, "max_steps": 3}, "engine": {"device": "cpu", "progress": False, "log_every": 1},
                "eval": {"samples": 0},
                "methods": [{"name": "seq_kd", "params": {"max_new_tokens": 12, "kd_weight": 1.0}}]}

    said: list[str] = []
    distill.run(recipe("hf", "hf"), log=said.append)
    distill.run(recipe("vllm", "vllm"), log=said.append)
    assert any("with hf in" in x and "tokens/s" in x for x in said)
    assert any("with vllm in" in x for x in said)
    assert kd_losses(tmp_path / "runs" / "hf", "seq_kd") == kd_losses(tmp_path / "runs" / "vllm", "seq_kd")
    (llm_call, gen_call) = [c for c in fake_vllm.CALLS if c[0] in ("LLM", "generate")][:2]
    assert llm_call[1].endswith("teacher")                        # vLLM loads the teacher's own folder
    kw = gen_call[2]
    assert kw["max_tokens"] == 12 and kw["stop_token_ids"] == [tiny_tok.eos_token_id]
    assert kw["allowed_token_ids"] == list(range(len(tiny_tok)))  # the rows both models have (student padded to 64)


def test_generation_benchmark_times_every_backend(fake_vllm, monkeypatch, tmp_path):
    """benchmarks/llm.py generation: a row per backend, each continuation the asked length, and the
    vLLM row when vllm is there (the stand-in here)."""
    import argparse
    import importlib.util
    from pathlib import Path

    import distill.families.llm.generation as G

    spec = importlib.util.spec_from_file_location("bench_llm", Path(__file__).resolve().parents[2] / "benchmarks" / "llm.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(G, "vllm_available", lambda: True)
    out = tmp_path / "gen.md"
    bench.generation(argparse.Namespace(models=["student-48x2"], prompts=4, prompt_tokens=5, new_tokens=6, batches=[4],
                                        repeats=1, threads=0, no_vllm=False, out_file=str(out)))
    rows = [line for line in out.read_text().splitlines() if line.startswith("| student-48x2")]
    assert [r.split(" | ")[2] for r in rows] == ["hf, one prompt at a time", "hf, batches of 4",
                                                 "hf, batches of 4, no KV cache", "vllm, engine start included"]
    assert rows[0].endswith("| 1.0x |") and "vllm: measured" in out.read_text()
    llm_calls = [c for c in fake_vllm.CALLS if c[0] == "generate"]
    assert len(llm_calls) == 2 and llm_calls[0][1] == 4 and llm_calls[0][2]["max_tokens"] == 6  # warm-up + 1 timed
