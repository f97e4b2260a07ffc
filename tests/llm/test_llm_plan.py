"""`distill plan`: the estimated peak memory against the measured peak of the same recipe, run in a
fresh process (CPU, resident-set peak; glibc told to return every freed block over 128 KiB so that
the peak is that of the live tensors), and the refusal of a recipe that cannot fit."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("transformers")
from llm_helpers import corpus, tiny_lm  # noqa: E402

from distill.config import load_config  # noqa: E402
from distill.errors import ConfigError  # noqa: E402
from distill.families.llm.plan import check, choose, plan  # noqa: E402

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "llm_plan.py"


def _bench():
    """benchmarks/llm_plan.py: the measurement in a fresh process and the architecture builder."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_llm_plan", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tiny_tok):
    d = tmp_path_factory.mktemp("plan_teacher")
    tiny_lm("llama", len(tiny_tok), hidden=256, layers=4, seed=1).save_pretrained(d)
    tiny_tok.save_pretrained(d)
    return d


def _recipe(tmp_path: Path, teacher_dir: Path, **over) -> dict:
    text = tmp_path / "train.txt"
    text.write_text("\n\n".join(corpus(900)))  # enough tokens that every micro-batch is full
    r = {"name": "plan", "family": "llm", "output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"),
         "teacher": {"path": str(teacher_dir)},
         "student": {"arch": "llama", "hidden_size": 192, "num_layers": 4, "num_heads": 4, "intermediate_size": 768},
         "data": {"source": "text", "path": str(text), "seq_len": 256, "batch_size": 16, "eval_batch_size": 4,
                  "pack": True},
         "train": {"epochs": 1, "max_steps": 2}, "engine": {"device": "cpu", "progress": False},
         "eval": {"samples": 0}, "methods": [{"name": "token_kd", "params": {"chunk_size": 256}}]}
    for k, v in over.items():
        r[k] = {**r.get(k, {}), **v} if isinstance(v, dict) else v
    return r


def _measured_peak(recipe: dict) -> float:
    try:
        peak = _bench().measured_peak(recipe)
    except RuntimeError as e:
        pytest.fail(str(e))
    if peak is None:
        pytest.skip("this system does not let a process reset its peak resident size (/proc/self/clear_refs)")
    return peak


@pytest.fixture(scope="module")
def wide_teacher_dir(tmp_path_factory, tiny_tok):
    """The same teacher with its vocabulary padded to 32768 rows: the chunked loss's workspace dominates."""
    d = tmp_path_factory.mktemp("plan_wide_teacher")
    tiny_lm("llama", len(tiny_tok), hidden=256, layers=4, seed=1, pad_vocab_to=32768).save_pretrained(d)
    tiny_tok.save_pretrained(d)
    return d


WIDE = {"student": {"pad_vocab_to": 32768}, "data": {"eval_batch_size": 1}}


@pytest.mark.parametrize("case", [
    {},
    {"student": {"lora": {"r": 8}}},
    {**WIDE, "methods": [{"name": "token_kd", "params": {"chunk_size": 1024}}]},
    {**WIDE, "methods": [{"name": "token_kd", "params": {"chunk_size": 1024, "divergence": "tvd"}}]},
    {**WIDE, "methods": [{"name": "sft", "params": {"chunk_size": 1024}}]},
    {**WIDE, "methods": [{"name": "token_kd", "params": {"chunk_size": 1024}}], "teacher": {"cache_top_k": 64}},
    {**WIDE, "methods": [{"name": "token_kd", "params": {"chunk_size": 256}}],
     "data": {"batch_size": 1, "eval_batch_size": 16}},  # the evaluation's logits are the peak
    {"student": {"path": "TEACHER", "lora": {"r": 8, "quantize": "nf4"}}},  # QLoRA on the teacher's own weights
    {"student": {"tokenizer": "byte"}, "methods": [{"name": "alm", "params": {"chunk_size": 256}}]},
    {"student": {"tokenizer": "byte"}, "methods": [{"name": "alm", "params": {"chunk_size": 256}}],
     "teacher": {"cache_top_k": 8}},
], ids=["full", "lora", "vocab32k-forward_kl", "vocab32k-tvd", "vocab32k-sft", "vocab32k-cached", "vocab32k-eval",
        "qlora-nf4", "xtok-alm", "xtok-alm-cached"])
def test_estimate_is_within_20_percent_of_the_measured_peak(tmp_path, teacher_dir, wide_teacher_dir, case):
    """The estimate of the placement the recipe asks for (colocated; cached with teacher.cache_top_k)."""
    from distill.families.llm.plan import current

    if "lora" in case.get("student", {}):
        pytest.importorskip("peft")
        if case["student"]["lora"].get("quantize"):
            pytest.importorskip("bitsandbytes")
            case = {**case, "student": {**case["student"], "path": str(teacher_dir)}}
    wide = "methods" in case and "tokenizer" not in case.get("student", {})
    recipe = _recipe(tmp_path, wide_teacher_dir if wide else teacher_dir, **case)
    cfg = load_config(recipe)
    placements, s, t = plan(cfg, devices=1)
    asked = current(cfg, 1)
    assert asked == ("cached" if "cache_top_k" in case.get("teacher", {}) else "colocated")
    est = next(p for p in placements if p.name == asked)
    measured = _measured_peak(recipe)
    assert est.peak > 0.5 * 2 ** 20 and measured > 0
    ratio = est.peak / measured
    assert 0.8 <= ratio <= 1.2, (f"estimate {est.peak / 2**20:.1f} MiB vs measured {measured / 2**20:.1f} MiB "
                                 f"({ratio:.2f}); parts: {({k: round(v / 2**20, 1) for k, v in est.parts.items()})}")


def test_parts_follow_the_recipe(tmp_path, teacher_dir):
    cfg = load_config(_recipe(tmp_path, teacher_dir))
    (col, off, cached, served), s, t = plan(cfg, devices=1)
    assert [p.name for p in (col, off, cached, served)] == ["colocated", "offloaded", "cached", "served"]
    # cached: token_kd reads the top-k, so no teacher forward while training; the build is a phase of its own
    assert cached.parts["teacher forward"] == 0 < col.parts["teacher forward"] and cached.parts["cache build"] > 0
    assert cached.peak == max(cached.train_peak, cached.eval_peak, cached.build_peak) and served.available
    mixed = plan(load_config(_recipe(tmp_path, teacher_dir, methods=[{"name": "token_kd"}, {"name": "on_policy"}])), 1)[0]
    assert mixed[2].parts["teacher forward"] == col.parts["teacher forward"]  # on_policy runs the teacher
    assert not mixed[3].available                                             # and cannot use a served one
    assert col.parts["teacher weights"] == t.params * 4 and off.parts["teacher weights"] == 0 and off.host == t.params * 4
    assert col.parts["gradients"] == 4 * s.params and col.parts["optimiser state"] == 8 * s.params
    # activations scale with the tokens of a micro-batch: half the batch, half the activations
    half = plan(load_config(_recipe(tmp_path, teacher_dir, data={"batch_size": 8})), devices=1)[0][0]
    assert half.parts["activations"] == pytest.approx(col.parts["activations"] / 2, rel=1e-6)
    # FSDP over 2 devices: the student's state halves, every device still holds a micro-batch
    fsdp = next(p for p in plan(cfg, devices=2)[0] if p.name == "fsdp")
    assert fsdp.parts["optimiser state"] == col.parts["optimiser state"] / 2
    lora = plan(load_config(_recipe(tmp_path, teacher_dir, student={"lora": {"r": 4}})), devices=1)[1]
    assert 0 < lora.trainable < lora.params / 10
    # a LoRA student may be sharded; a quantised base or a teacher that is the student's base may not
    fsdp_of = lambda **over: next(p for p in plan(load_config(_recipe(tmp_path, teacher_dir, **over)),  # noqa: E731
                                                   devices=2)[0] if p.name == "fsdp")
    assert fsdp_of(student={"lora": {"r": 4}}).available
    assert not fsdp_of(teacher={"path": None, "student_base": True, "tokenizer": str(teacher_dir)},
                       student={"path": str(teacher_dir), "lora": {"r": 4}}).available
    if importlib.util.find_spec("bitsandbytes") is not None:
        assert not fsdp_of(student={"path": str(teacher_dir), "lora": {"r": 4, "quantize": "nf4"}}).available


def test_sizes_are_printed_with_one_unit():
    from distill.families.llm.plan import gib

    assert gib(1.5 * 2 ** 30) == "1.50 GiB" and gib(1.1 * 2 ** 20) == "1.1 MiB" and gib(0) == "0.00 GiB"


def test_run_refuses_a_recipe_that_cannot_fit(tmp_path, teacher_dir, monkeypatch):
    import distill.families.llm.plan as P

    cfg = load_config(_recipe(tmp_path, teacher_dir))
    need = plan(cfg, 1)[0][0].peak
    monkeypatch.setattr(P, "device_memory", lambda device="auto": (need * 0.5, "a small device"))
    with pytest.raises(ConfigError, match=r"memory: this recipe is estimated to need [0-9.]+ [GM]iB per device "
                                          r"\(colocated;.*more than the [0-9.]+ [GM]iB of a small device.*"
                                          r"memory_check: false"):
        check(cfg, 1, print)
    fallback = choose(plan(cfg, 1)[0], need * 0.5)
    assert fallback is None or (fallback.name != "colocated" and fallback.peak <= need * 0.5)
    said = []
    check(load_config(_recipe(tmp_path, teacher_dir, memory_check=False)), 1, said.append)
    assert said == []


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("targets", [None, ["q_proj", "k_proj", "v_proj", "o_proj"], r".*mlp\.(gate_proj|up_proj|down_proj|c_fc)"])
def test_planned_adapter_size_is_the_trainable_count_of_the_real_wrap(arch, targets):
    """The planner's LoRA parameters (a meta-device wrap) equal what peft trains on a real model."""
    pytest.importorskip("peft")
    from distill.families.llm.config import LMLoraConfig
    from distill.families.llm.lora import wrap_lora
    from distill.families.llm.models import build_student
    from distill.families.llm.plan import _meta, lora_params

    if arch == "gpt2" and isinstance(targets, list):
        targets = ["c_attn", "c_proj"]
    lc = LMLoraConfig(r=4, target_modules=targets)
    make = lambda: build_student(arch, 64, 1, 2, hidden_size=32, num_layers=2, num_heads=4, max_positions=64)  # noqa: E731
    real = wrap_lora(make(), lc)
    trained = sum(p.numel() for p in real.parameters() if p.requires_grad)
    with _meta():
        meta = make()
    assert lora_params(meta, lc) == trained > 0


def test_the_activation_probe_is_kept_per_architecture(tmp_path, teacher_dir, monkeypatch):
    """A second plan of the same student architecture reads the probe from cache_dir; another
    depth of the same architecture too (the probe runs at 1 and 2 layers); another width probes."""
    import distill.families.llm.plan as P

    cfg = load_config(_recipe(tmp_path, teacher_dir))
    first = plan(cfg, devices=1)[0][0].parts["activations"]
    assert (tmp_path / "cache" / "plan_probes.json").is_file()
    calls = []
    real = P._measure
    monkeypatch.setattr(P, "_measure", lambda *a: calls.append(a) or real(*a))
    assert plan(cfg, devices=1)[0][0].parts["activations"] == first and not calls
    deeper = plan(load_config(_recipe(tmp_path, teacher_dir, student={"num_layers": 6})), devices=1)[0][0]
    assert not calls and deeper.parts["activations"] > first
    plan(load_config(_recipe(tmp_path, teacher_dir, student={"hidden_size": 128, "intermediate_size": 512})), devices=1)
    assert len(calls) == 1


def test_loss_workspace_follows_the_method(tmp_path, teacher_dir):
    """Each method is priced by what its chunked loss computes: the labels' cross-entropy and a
    cached or served teacher's top-k read the student's logits only; autograd kinds (tvd) cost more
    blocks than the closed-form ones; a method the planner has not measured gets the default."""
    from distill.families.llm.plan import DEFAULT_LOSS_BLOCKS, LOSS_BLOCKS, loss_bytes, loss_kind

    def kind(name, source="teacher", **params):
        cfg = load_config(_recipe(tmp_path, teacher_dir, methods=[{"name": name, "params": params}]))
        return loss_kind(cfg, cfg.methods[0], source), cfg

    assert kind("token_kd")[0] == "forward_kl" and kind("token_kd", divergence="jsd")[0] == "jsd"
    assert kind("token_kd", top_k=32)[0] == "top_k" and kind("token_kd", "served")[0] == "sparse"
    assert kind("token_kd", "cache")[0] == "sparse" and kind("on_policy", "cache")[0] == "jsd"  # on_policy runs the teacher
    assert kind("sft")[0] == "ce" and kind("first")[0] == "top_k"
    assert set(LOSS_BLOCKS) >= {"forward_kl", "reverse_kl", "jsd", "tvd", "top_k", "sparse", "ce"}
    k, cfg = kind("token_kd", chunk_size=64)
    (col, _, cached, served), s, t = plan(cfg, devices=1)
    tokens = 16 * 256
    fused = 4 * (s.vocab * s.hidden + tokens * s.hidden)
    assert loss_bytes(cfg, cfg.methods[0], s, t, tokens) == 4 * 64 * (s.vocab + t.vocab + 1 * min(s.vocab, t.vocab)) + fused
    assert col.parts["loss"] == loss_bytes(cfg, cfg.methods[0], s, t, tokens)
    assert served.parts["loss"] == 4 * LOSS_BLOCKS["sparse"] * 64 * s.vocab + fused
    tvd = load_config(_recipe(tmp_path, teacher_dir, methods=[{"name": "token_kd", "params": {"chunk_size": 64, "divergence": "tvd"}}]))
    assert loss_bytes(tvd, tvd.methods[0], s, t, tokens) > col.parts["loss"]
    uld = SimpleNamespace(name="uld", params={"chunk_size": 64})  # cross-tokenizer: blocks of the larger vocabulary
    assert loss_kind(cfg, uld) == "uld"
    assert loss_bytes(cfg, uld, s, t, tokens) == 4 * LOSS_BLOCKS["uld"] * 64 * max(s.vocab, t.vocab) + fused
    unknown = SimpleNamespace(name="no_such_method", params={})  # a method the planner has no measurement of
    assert loss_kind(cfg, unknown) is None
    assert loss_bytes(cfg, unknown, s, t, tokens) == \
        4 * 1024 * (s.vocab + t.vocab + (DEFAULT_LOSS_BLOCKS - 2) * min(s.vocab, t.vocab)) + fused


def _write_llama2c(path: Path, dim=32, hidden=64, layers=2, heads=4, kv=2, vocab=96, seq_len=64, tied=True):
    """A llama2.c version-0 checkpoint of random weights, laid out as llama2.c's export writes it."""
    import struct

    import numpy as np

    head, kv_dim = dim // heads, kv * (dim // heads)
    n = (vocab * dim + layers * (dim + 2 * dim * dim + 2 * kv_dim * dim + dim + 3 * hidden * dim) + dim
         + seq_len * head + (0 if tied else vocab * dim))
    rng = np.random.default_rng(0)
    path.write_bytes(struct.pack("7i", dim, hidden, layers, heads, kv, vocab if tied else -vocab, seq_len)
                     + rng.standard_normal(n).astype(np.float32).tobytes())


@pytest.mark.parametrize("tied", [True, False])
def test_a_llama2c_student_is_planned_from_its_header(tmp_path, teacher_dir, tied):
    """student.path may be a llama2.c .bin (the run converts it): the plan reads its header, and its
    parameter count is that of the converted model."""
    pytest.importorskip("peft")
    from distill.families.llm.convert import convert_llama2c

    ckpt = tmp_path / "small.bin"
    _write_llama2c(ckpt, tied=tied)
    converted = convert_llama2c(ckpt, tmp_path / "converted")
    recipe = _recipe(tmp_path, teacher_dir, student={"path": str(ckpt), "lora": {"r": 4}})
    recipe["teacher"] = {"student_base": True, "tokenizer": str(tmp_path / "unused.model")}
    cfg = load_config(recipe)
    (col, off, cached, served), s, t = plan(cfg, devices=1)
    assert s.params == sum(p.numel() for p in converted.parameters())
    assert s.vocab == 96 and s.hidden == 32 and 0 < s.trainable < s.params
    assert col.parts["teacher weights"] == 0 and col.parts["teacher forward"] > 0  # the base, no second copy
    assert not off.available and not served.available


@pytest.mark.parametrize("model_type", ["qwen3", "gemma2", "smollm3"])
def test_other_architectures_are_planned_within_20_percent(tmp_path, tiny_tok, model_type):
    """Pretrained-style students and teachers of other transformers classes (student.path): Qwen3;
    Gemma2, whose layers alternate sliding and full attention (`layer_types`) and whose logits are
    soft-capped; SmolLM3, which leaves rotary embeddings out of every fourth layer (`no_rope_layers`).
    The activation probe builds 1- and 2-layer copies of each kind of layer."""
    from distill.families.llm.plan import _layer_kinds, teacher_shape

    _bench().hf_lm(model_type, tmp_path / "t", tiny_tok, 256, 1)
    _bench().hf_lm(model_type, tmp_path / "s", tiny_tok, 192, 2)
    recipe = _recipe(tmp_path, tmp_path / "t", data={"eval_batch_size": 1})
    recipe["student"] = {"path": str(tmp_path / "s")}
    cfg = load_config(recipe)
    kinds = _layer_kinds(teacher_shape(cfg).config)
    assert sum(kinds.values()) == 4 and len(kinds) == {"qwen3": 1, "gemma2": 2, "smollm3": 2}[model_type]
    est = next(p for p in plan(cfg, devices=1)[0] if p.name == "colocated")
    measured = _measured_peak(recipe)
    ratio = est.peak / measured
    assert 0.8 <= ratio <= 1.2, (f"{model_type}: estimate {est.peak / 2**20:.1f} MiB vs measured "
                                 f"{measured / 2**20:.1f} MiB ({ratio:.2f})")


def test_plan_json_is_the_plan_as_data(tmp_path, teacher_dir):
    """`distill plan --json`: stdout is one JSON document with the same placements and peaks as the
    in-process plan; the exit status is 1 when no placement fits the given memory."""
    import json
    import subprocess
    import sys

    import yaml

    recipe = _recipe(tmp_path, teacher_dir)
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(recipe))
    placements = plan(load_config(recipe), 1)[0]
    need = next(p for p in placements if p.name == "colocated").peak

    def run(gib: float):
        return subprocess.run([sys.executable, "-m", "distill.cli.main", "plan", str(path), "--json",
                               "--memory", f"{gib:.6f}"], capture_output=True, text=True, timeout=300)

    out = run(need * 1.5 / 2 ** 30)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert [p["name"] for p in got["placements"]] == [p.name for p in placements]
    for g, p in zip(got["placements"], placements):
        assert g["peak"] == pytest.approx(p.peak, rel=1e-9) and g["parts"] == pytest.approx(p.parts, rel=1e-9)
        assert g["fits"] == (p.available and p.peak <= got["device_memory"])
    assert got["asked"] == "colocated" and got["picked"] == "colocated" and got["device"] == "--memory"
    assert got["student"]["parameters"] > 0 and got["teacher"]["vocab"] == got["student"]["vocab"]
    smallest = min(p.peak for p in placements if p.available)
    out = run(smallest * 0.5 / 2 ** 30)
    assert out.returncode == 1 and json.loads(out.stdout)["picked"] is None
    assert not any(p["fits"] for p in json.loads(out.stdout)["placements"])
