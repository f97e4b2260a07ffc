"""QLoRA students (`student.lora.quantize`): the frozen base held by bitsandbytes in 4 or 8 bits,
the adapter trained in fp32 over it. The reference is QLoRA's layer (Dettmers et al. 2023, eq. 5):
Y = X dequant(W_q) + s X A^T B^T, i.e. an unquantised LoRA model whose linear weights are the
dequantised 4-bit weights; the format is checked on its own terms (at most 16 levels per block of
64 weights)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("bitsandbytes")
from llm_helpers import corpus, tiny_lm  # noqa: E402

import distill  # noqa: E402
from distill.config import load_config  # noqa: E402
from distill.errors import ConfigError  # noqa: E402
from distill.families.llm.config import LMLoraConfig  # noqa: E402
from distill.families.llm.data import Example, LMLoader, model_inputs, rows_of  # noqa: E402
from distill.families.llm.lora import BaseTeacher, wrap_lora  # noqa: E402
from distill.families.llm.models import is_quantized, load_causal_lm  # noqa: E402
from distill.families.llm.token_kd import TokenKD  # noqa: E402
from distill.teacher import Teacher  # noqa: E402

V = 64


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("qbase")
    m = tiny_lm("llama", V, hidden=64, seed=3)
    with torch.no_grad():
        m.lm_head.weight.mul_(4.0)
    m.save_pretrained(d)
    return d


def _batch():
    g = torch.Generator().manual_seed(0)
    exs = []
    for _ in range(6):
        ids = [1] + torch.randint(3, V, (int(torch.randint(6, 14, (1,), generator=g)),), generator=g).tolist() + [2]
        exs.append(Example(ids, start=1, prompt_len=3, n_bytes=len(ids)))
    return next(iter(LMLoader(rows_of(exs, 64, True), len(exs), 0, packed=True, shuffle=False)))


def _dequantised(model) -> dict[str, torch.Tensor]:
    import bitsandbytes.functional as F
    from bitsandbytes.nn import Linear4bit

    return {n: F.dequantize_4bit(m.weight.data, m.weight.quant_state).float()
            for n, m in model.named_modules() if isinstance(m, Linear4bit)}


@pytest.mark.parametrize("kind", ["nf4", "fp4"])
def test_qlora_layer_is_the_dequantised_weight_plus_the_adapter(base_dir, kind):
    """Loss and adapter gradients of a QLoRA student equal those of an fp32 LoRA student whose
    linear weights are the dequantised 4-bit ones, also after a no-grad evaluation forward (which
    bitsandbytes on CPU would otherwise answer with a repacked, non-differentiable layout)."""
    from bitsandbytes.nn import Linear4bit

    base = load_causal_lm(str(base_dir), quantize=kind, device="cpu")
    assert is_quantized(base)
    full = load_causal_lm(str(base_dir))
    deq = _dequantised(base)
    assert set(deq) == {n for n, m in full.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n}
    own = dict(full.named_modules())
    for n, w in deq.items():
        w0 = own[n].weight.detach()
        assert 0.02 < float((w - w0).norm() / w0.norm()) < 0.25          # 4 bits, not a copy
        assert max(len(torch.unique(b)) for b in w.reshape(-1, 64)) <= 16   # 16 levels per block of 64
    teacher = Teacher(tiny_lm("llama", V, hidden=32, seed=7))
    lc = LMLoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj", "up_proj"])
    student = wrap_lora(base, lc)
    with torch.no_grad():
        for n, p in student.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    student.eval()
    with torch.no_grad():  # an evaluation before the next step
        student(**model_inputs(_batch()))
    student.train()
    assert all(type(m).__name__ != "Linear" or "lora" in n for n, m in student.named_modules()
               if "proj" in n.rsplit(".", 1)[-1] and not isinstance(m, Linear4bit))
    with torch.no_grad():
        for n, w in deq.items():
            own[n].weight.copy_(w)
    ref = wrap_lora(full, lc)
    adapter = {n: p for n, p in student.named_parameters() if p.requires_grad}
    assert adapter and all("lora_" in n for n in adapter)
    with torch.no_grad():
        for n, p in ref.named_parameters():
            if "lora_" in n:
                p.copy_(adapter[n])
    batch = _batch()
    got = TokenKD(student, teacher)(batch)["kd"]
    want = TokenKD(ref, teacher)(batch)["kd"]
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-4) and float(want.detach()) > 0.1
    got.backward()
    want.backward()
    ref_grads = {n: p.grad for n, p in ref.named_parameters() if "lora_" in n}
    for n, p in adapter.items():
        assert p.grad is not None and float(p.grad.abs().max()) > 0, n
        assert torch.allclose(p.grad, ref_grads[n], rtol=1e-3, atol=1e-6), n


def _recipe(tmp_path: Path, model_dir: Path, **over) -> dict:
    text = tmp_path / "train.txt"
    text.write_text("\n\n".join(corpus(24)))
    return {"name": "q", "family": "llm", "output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"),
            "teacher": {"path": str(model_dir)},
            "student": {"path": str(model_dir), "lora": {"r": 4, "alpha": 8, "quantize": "nf4", "merge": True}},
            "data": {"source": "text", "path": str(text), "seq_len": 32, "batch_size": 4, "eval_batch_size": 8,
                     "prompt_tokens": 4},
            "train": {"epochs": 1, "max_steps": 3, "optimizer": {"lr": 1e-2}},
            "engine": {"device": "cpu", "progress": False},
            "eval": {"samples": 0}, "methods": [{"name": "token_kd"}], **over}


@pytest.fixture
def model_dir(tmp_path, tiny_tok):
    d = tmp_path / "model"
    tiny_lm("llama", len(tiny_tok), hidden=64, seed=1).save_pretrained(d)
    tiny_tok.save_pretrained(d)
    return d


def test_qlora_run_saves_the_adapter_and_a_full_precision_merge(tmp_path, model_dir):
    """A run with an nf4 base: the adapter is saved for the base at student.path, `merged/` is a plain
    fp32 model (no quantisation config) equal to that base with the adapter merged, and a resumed
    run reloads the adapter on a quantised base and reports the same metrics."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    recipe = _recipe(tmp_path, model_dir)
    s = distill.run(recipe, log=lambda m: None)
    out = Path(s["run_dir"]) / "students" / "token_kd"
    conf = json.loads((out / "adapter_config.json").read_text())
    assert Path(conf["base_model_name_or_path"]) == model_dir.resolve()
    merged_conf = json.loads((out / "merged" / "config.json").read_text())
    assert "quantization_config" not in merged_conf
    merged = AutoModelForCausalLM.from_pretrained(str(out / "merged"))
    assert merged.dtype == torch.float32
    want = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(model_dir)), str(out)).merge_and_unload()
    ids = torch.arange(3, 40)[None]
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, want(ids).logits, atol=1e-5, rtol=0)
    st = s["students"]["token_kd"]
    assert st["bits_per_byte"] > 0 and 0 < st["adapter_params"] < st["params"]
    from distill.families.llm.models import count_parameters

    assert st["params"] == count_parameters(want) + st["adapter_params"]  # 4-bit weights counted as weights
    again = distill.run(recipe, log=lambda m: None)
    assert again["students"]["token_kd"]["bits_per_byte"] == pytest.approx(st["bits_per_byte"], rel=1e-6)


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_quantised_base_as_the_teacher_shares_its_weights(tmp_path, model_dir, kind):
    """teacher.student_base over a quantised base: the teacher view holds the base's own quantised
    layers (no second copy), gives the base's logits while the adapter trains, also after the
    view ran first (int8 keeps its scales on the layer after a forward), and in a run the student
    starts as its teacher (a KD loss of 0 at the first step, the adapter's B being 0)."""
    from bitsandbytes.nn import Linear4bit, Linear8bitLt

    base = load_causal_lm(str(model_dir), quantize=kind, device="cpu")
    teacher = BaseTeacher(base)
    ids = torch.arange(3, 30)[None]
    with torch.no_grad():
        ref = base(ids).logits
    student = wrap_lora(base, LMLoraConfig(r=4))
    with torch.no_grad():
        assert torch.equal(teacher.module(ids).logits, ref)  # the view first
        assert torch.equal(student(ids).logits, ref)         # then the student, adapter B = 0
        for n, p in student.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
        assert not torch.allclose(student(ids).logits, ref, atol=1e-3)
        assert torch.equal(teacher.module(ids).logits, ref)
    mine = {p.data_ptr() for p in student.parameters()}
    assert any(isinstance(m, (Linear4bit, Linear8bitLt)) for m in teacher.module.modules())
    assert all(p.data_ptr() in mine for p in teacher.module.parameters())
    recipe = _recipe(tmp_path, model_dir, teacher={"student_base": True, "tokenizer": str(model_dir)})
    recipe["student"]["lora"].update(merge=False, quantize=kind)
    recipe["engine"]["log_every"] = 1
    recipe["methods"] = [{"name": "token_kd", "params": {"ce_weight": 1.0}}]  # the CE moves it off the base
    s = distill.run(recipe, log=lambda m: None)
    rows = [json.loads(line) for line in (Path(s["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    kd = [r["loss/kd"] for r in rows if r.get("phase") == "token_kd" and "loss/kd" in r]
    assert len(kd) == 3 and kd[0] == pytest.approx(0.0, abs=1e-6) and kd[-1] > 0
    assert s["students"]["token_kd"]["teacher_agreement"] > 0.9


def test_quantize_refusals_name_the_field_and_the_fix(tmp_path, model_dir, monkeypatch):
    fresh = _recipe(tmp_path, model_dir, student={"arch": "llama", "hidden_size": 32, "lora": {"quantize": "nf4"}})
    with pytest.raises(ConfigError, match=r"student.lora.quantize: .*give it as student.path"):
        load_config(fresh)
    with pytest.raises(ConfigError, match="student.lora.quantize"):
        load_config(_recipe(tmp_path, model_dir, student={"path": str(model_dir), "lora": {"quantize": "nf3"}}))
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(ConfigError, match=r"student.lora.quantize: nf4 needs bitsandbytes.*pip install bitsandbytes"):
        load_config(_recipe(tmp_path, model_dir))


@pytest.mark.parametrize("kind", ["nf4", "fp4", "int8"])
def test_planned_weights_of_a_quantised_base_are_its_loaded_bytes(tmp_path, model_dir, kind):
    """The planner's student weights for student.lora.quantize equal the bytes of the parameters
    and quantisation state of the model bitsandbytes loads (within 2%)."""
    from distill.families.llm.plan import plan

    recipe = _recipe(tmp_path, model_dir)
    recipe["student"]["lora"]["quantize"] = kind
    placements, s, _ = plan(load_config(recipe), 1)
    model = load_causal_lm(str(model_dir), quantize=kind, device="cpu")
    tensors = [*model.parameters(), *model.buffers()]
    for p in model.parameters():  # the quantisation state lives on the weights, beside the parameters
        qs = getattr(p, "quant_state", None)
        while qs is not None:  # 4-bit: block scales and code book, nf4's nested state of the scales
            tensors += [v for v in vars(qs).values() if torch.is_tensor(v)]
            qs = getattr(qs, "state2", None)
        if getattr(p, "SCB", None) is not None:  # int8: the row scales
            tensors.append(p.SCB)
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    loaded = float(sum(storages.values()))
    assert s.weights == pytest.approx(loaded, rel=0.02)
    assert placements[0].parts["student weights"] == s.weights < s.params * 4 * 0.8


def test_the_qlora_benchmark_table_pairs_the_two_sft_columns_by_seed():
    """benchmarks/llm_qlora.py: mean +- sample std per column, and the per-seed difference of
    distill's and TRL's sft (not the difference of the means' spreads)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "bench_llm_qlora", Path(__file__).resolve().parents[2] / "benchmarks" / "llm_qlora.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    results = {"nf4-s0": {"base": 4.0, "sft": 3.0, "trl_sft": 3.1, "anchored": 3.2},
               "nf4-s1": {"base": 5.0, "sft": 4.0, "trl_sft": 4.3, "anchored": 4.2},
               "none-s0": {"base": 4.0, "sft": 3.0, "anchored": 3.1}}  # no peer: its cells say "-"
    rows = {line.split(" | ")[0].strip("| `"): line for line in bench.table(results).splitlines()[2:]}
    cells = [c.strip() for c in rows["nf4"].strip("|").split("|")]
    assert cells[1:] == ["0,1", "4.500 +- 0.707", "3.500 +- 0.707", "3.700 +- 0.849", "3.700 +- 0.707",
                         "-0.200 +- 0.141"]
    assert [c.strip() for c in rows["none"].strip("|").split("|")][1:] == ["0", "4.000", "3.000", "-", "3.100", "-"]
    assert "int8" not in rows and "nf4" in bench.table(results, seeds=[1]) and "0,1" not in bench.table(results, seeds=[1])
