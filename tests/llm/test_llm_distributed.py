"""A tiny LM recipe in 2 gloo processes gives the student weights of 1 process (same global batch)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

pytest.importorskip("transformers")
from llm_helpers import corpus, tiny_lm  # noqa: E402


def _run(tmp_path, recipe, name, *extra, env=None, fails=False):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(dict(recipe, name=name)))
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "DISTILL_RUN_DIR")}
    out = subprocess.run([sys.executable, "-m", "distill.cli.main", "run", str(path), *extra], capture_output=True,
                         text=True, timeout=600, env={**base, "OMP_NUM_THREADS": "1", **(env or {})})
    assert (out.returncode != 0) if fails else (out.returncode == 0), out.stderr[-3000:]
    return tmp_path / "runs" / name


def _recipe(tmp_path, teacher: dict, student: dict, *, steps: int, ce_weight: float, **engine) -> dict:
    """A tiny text recipe (40 short documents, unpacked rows of 48, SGD) with this teacher and student."""
    text = tmp_path / "train.txt"
    text.write_text("\n\n".join(corpus(40)))
    return {"family": "llm", "output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"),
            "teacher": teacher, "student": student,
            "data": {"source": "text", "path": str(text), "seq_len": 48, "batch_size": 4, "eval_batch_size": 8,
                     "prompt_tokens": 4, "pack": False},
            "train": {"epochs": 1, "max_steps": steps, "optimizer": {"name": "sgd", "lr": 0.5}},
            "engine": {"device": "cpu", "progress": False, **engine},
            "eval": {"samples": 0}, "methods": [{"name": "token_kd", "params": {"ce_weight": ce_weight}}]}


def _assert_same(one, two, name: str, atol: float) -> dict:
    """The file `name` of the token_kd student of runs `one` and `two`: same tensors (to `atol`)."""
    import torch
    from safetensors.torch import load_file

    a, b = (load_file(str(r / "students" / "token_kd" / name)) for r in (one, two))
    assert a and set(a) == set(b), name
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol), (name, k, (a[k] - b[k]).abs().max())
    return a


@pytest.mark.slow
def test_two_processes_equal_one_for_token_kd(tmp_path, tiny_tok):
    teacher = tmp_path / "teacher"
    tiny_lm("llama", len(tiny_tok), hidden=24, seed=3).save_pretrained(teacher)
    tiny_tok.save_pretrained(teacher)
    recipe = _recipe(tmp_path, {"path": str(teacher)},
                     {"arch": "llama", "hidden_size": 16, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1},
                     steps=4, ce_weight=0.5, grad_accum=2)
    one = _run(tmp_path, recipe, "one")
    two = _run(tmp_path, recipe, "two", "--nproc", "2")
    _assert_same(one, two, "model.safetensors", atol=1e-6)
    # and training did change the weights (not a vacuous equality of two untouched models)
    import json

    done = json.loads((two / "students" / "token_kd" / "result.json").read_text())
    assert done["steps"] == 4


@pytest.mark.slow
def test_two_processes_equal_one_for_a_qlora_student(tmp_path, tiny_tok):
    """An nf4 base with a LoRA adapter under DDP (gloo): each process loads and quantises the base
    itself, only the adapter's gradients are reduced, and the saved adapter equals 1 process's."""
    pytest.importorskip("peft")
    pytest.importorskip("bitsandbytes")
    base = tmp_path / "base"
    tiny_lm("llama", len(tiny_tok), hidden=64, seed=3).save_pretrained(base)
    tiny_tok.save_pretrained(base)
    recipe = _recipe(tmp_path, {"student_base": True, "tokenizer": str(base)},
                     {"path": str(base), "lora": {"r": 4, "quantize": "nf4"}}, steps=3, ce_weight=1.0)
    one = _run(tmp_path, recipe, "one")
    two = _run(tmp_path, recipe, "two", "--nproc", "2")
    a = _assert_same(one, two, "adapter_model.safetensors", atol=1e-5)
    assert any(float(v.abs().max()) > 0 for k, v in a.items() if "lora_B" in k)  # the adapter trained


@pytest.mark.slow
def test_fsdp_lora_student_killed_and_resumed_equals_one_process(tmp_path, tiny_tok):
    """engine.strategy=fsdp with a LoRA student: 2 gloo processes shard the frozen base and the
    adapter, are SIGKILLed after step 3 (last checkpoint: step 2) and resumed; the saved adapter and
    the merged model equal 1 process's, and the merged model keeps its tied embeddings (one tensor
    in the file, as the base has)."""
    pytest.importorskip("peft")
    from safetensors.torch import load_file

    teacher, base = tmp_path / "teacher", tmp_path / "base"
    tiny_lm("llama", len(tiny_tok), hidden=24, seed=3).save_pretrained(teacher)
    tiny_lm("llama", len(tiny_tok), hidden=16, seed=5).save_pretrained(base)
    for d in (teacher, base):
        tiny_tok.save_pretrained(d)
    recipe = _recipe(tmp_path, {"path": str(teacher)}, {"path": str(base), "lora": {"r": 4, "merge": True}},
                     steps=4, ce_weight=0.5)
    one = _run(tmp_path, recipe, "one")
    fsdp = ("--nproc", "2", "engine.strategy=fsdp", "engine.checkpoint_every=2")
    killed = _run(tmp_path, recipe, "two", *fsdp, env={"DISTILL_FAULT_STEP": "3"}, fails=True)
    out = killed / "students" / "token_kd"
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_00000002.pt"
    assert not (out / "adapter_model.safetensors").exists()
    two = _run(tmp_path, recipe, "two", *fsdp, "--resume")
    assert two == killed
    adapter = _assert_same(one, two, "adapter_model.safetensors", atol=1e-5)
    _assert_same(one, two, "merged/model.safetensors", atol=1e-5)
    assert any(float(v.abs().max()) > 0 for k, v in adapter.items() if "lora_B" in k)  # the adapter trained
    merged = load_file(str(two / "students" / "token_kd" / "merged" / "model.safetensors"))
    assert set(merged) == set(load_file(str(base / "model.safetensors")))  # tied: no separate lm_head.weight
