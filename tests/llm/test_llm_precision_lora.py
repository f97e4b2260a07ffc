"""Half-precision teachers and students, LoRA students (peft), and the teacher that is the
student's own base with the adapter left out."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")
from llm_helpers import corpus, tiny_lm  # noqa: E402

import distill  # noqa: E402
from distill.config import EngineConfig, OptimizerConfig, TrainConfig, load_config  # noqa: E402
from distill.engine import Engine  # noqa: E402
from distill.errors import ConfigError  # noqa: E402
from distill.families.llm.config import LMLoraConfig  # noqa: E402
from distill.families.llm.data import Example, LMLoader, model_inputs, rows_of  # noqa: E402
from distill.families.llm.lora import BaseTeacher, save_adapter, wrap_lora  # noqa: E402
from distill.families.llm.models import load_causal_lm  # noqa: E402
from distill.families.llm.token_kd import TokenKD  # noqa: E402
from distill.teacher import Teacher  # noqa: E402

V = 64


def _examples(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = [1] + torch.randint(3, V, (int(torch.randint(6, 14, (1,), generator=g)),), generator=g).tolist() + [2]
        out.append(Example(ids, start=1, prompt_len=3, n_bytes=len(ids)))
    return out


def _loader(exs):
    return LMLoader(rows_of(exs, 64, True), len(exs), 0, packed=True, shuffle=False)


def _batch():
    return next(iter(_loader(_examples())))


def _logits(model, batch):
    with torch.no_grad():
        return model(**model_inputs(batch)).logits.float()


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    """A tiny llama saved as a transformers folder (the teacher, or the LoRA student's base)."""
    d = tmp_path_factory.mktemp("lm")
    m = tiny_lm("llama", V, hidden=24, seed=1)
    with torch.no_grad():  # a peaked model: the divergences are far from 0
        m.lm_head.weight.mul_(4.0)
    m.save_pretrained(d)
    return d


@pytest.mark.parametrize("dtype, torch_dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_half_precision_teacher_gives_the_fp32_kd_loss(lm_dir, dtype, torch_dtype):
    """The same teacher weights loaded in bf16 or fp16: the token_kd loss (chunked and not) is within
    1e-2 of fp32's, and the divergence is computed in fp32."""
    batch = _batch()
    t32 = Teacher(load_causal_lm(str(lm_dir)))
    t16 = Teacher(load_causal_lm(str(lm_dir), dtype=dtype))
    assert next(t16.module.parameters()).dtype == torch_dtype
    for chunk in (1024, 7):
        torch.manual_seed(0)
        student = tiny_lm("gpt2", V, pad_vocab_to=80)
        ref = TokenKD(student, t32, chunk_size=chunk)(batch)["kd"]
        got = TokenKD(student, t16, chunk_size=chunk)(batch)["kd"]
        assert got.dtype == torch.float32 and float(ref.detach()) > 0.1
        assert float(got.detach()) == pytest.approx(float(ref.detach()), rel=1e-2)


def test_lora_student_trains_only_its_adapter_and_saves_it(tmp_path, lm_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    teacher = Teacher(tiny_lm("llama", V, hidden=24, seed=5))
    student = wrap_lora(load_causal_lm(str(lm_dir), dtype="bf16"), LMLoraConfig(r=4, alpha=8, merge=True))
    base0 = {n: p.detach().clone() for n, p in student.named_parameters() if "lora_" not in n}
    ada0 = {n: p.detach().clone() for n, p in student.named_parameters() if "lora_" in n}
    assert ada0 and all(p.dtype == torch.float32 for p in ada0.values())  # the adapter trains in fp32
    assert all(p.dtype == torch.bfloat16 for p in base0.values())
    method = TokenKD(student, teacher)
    engine = Engine(EngineConfig(device="cpu", progress=False), tmp_path / "phase", seed=0)
    engine.fit(method, _loader(_examples()), TrainConfig(epochs=3, optimizer=OptimizerConfig(lr=1e-2)))
    assert engine.step_count == 3
    trained = {id(p) for g in engine._opt.param_groups for p in g["params"]}
    assert trained == {id(p) for n, p in student.named_parameters() if "lora_" in n}
    now = dict(student.named_parameters())
    assert all(torch.equal(now[n], v) for n, v in base0.items())                  # base bit-identical
    assert any(not torch.equal(now[n], v) for n, v in ada0.items() if "lora_B" in n)  # adapter moved

    class Tok:  # save_adapter writes the tokenizer too
        def save_pretrained(self, d):
            Path(d, "tok.txt").write_text("t")

    out = tmp_path / "student"
    save_adapter(student, Tok(), out, merge=True, base_path=str(lm_dir))
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert not (out / "model.safetensors").exists()
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(lm_dir)
    batch = _batch()
    want = _logits(student, batch)
    again = PeftModel.from_pretrained(load_causal_lm(str(lm_dir), dtype="bf16"), str(out))
    assert torch.equal(_logits(again, batch), want)
    merged = AutoModelForCausalLM.from_pretrained(str(out / "merged"))
    assert merged.dtype == torch.bfloat16 and not hasattr(merged, "peft_config")
    # the merged weights are rounded to bf16; in fp32 merging is exact to float error
    s32 = wrap_lora(load_causal_lm(str(lm_dir)), LMLoraConfig(r=4, alpha=8))
    with torch.no_grad():
        for n, p in s32.named_parameters():
            if "lora_" in n:
                p.copy_(now[n])
    save_adapter(s32, Tok(), tmp_path / "s32", merge=True)
    m32 = AutoModelForCausalLM.from_pretrained(str(tmp_path / "s32" / "merged"))
    assert torch.allclose(_logits(m32, batch), _logits(s32, batch), atol=1e-5, rtol=0)
    assert (_logits(merged, batch) - want).abs().max() < 0.1 * want.abs().max()


def test_teacher_as_student_base_shares_the_weights_and_leaves_the_adapter_out(lm_dir):
    base = load_causal_lm(str(lm_dir))
    batch = _batch()
    ref = _logits(load_causal_lm(str(lm_dir)), batch)
    teacher = BaseTeacher(base)
    student = wrap_lora(base, LMLoraConfig(r=4, alpha=8))
    with torch.no_grad():  # a trained adapter: the student's logits are no longer the base's
        for n, p in student.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    assert not torch.allclose(_logits(student, batch), ref, atol=1e-3)
    assert torch.equal(_logits(teacher.module, batch), ref)
    with student.disable_adapter():
        assert torch.equal(_logits(student, batch), ref)
    # no second copy: the teacher's parameters are the student's base parameters
    mine = {p.data_ptr() for p in student.parameters()}
    assert all(p.data_ptr() in mine for p in teacher.module.parameters())
    assert sum(p.numel() for p in teacher.module.parameters()) < sum(p.numel() for p in student.parameters())
    assert teacher.fingerprint() == Teacher(load_causal_lm(str(lm_dir))).fingerprint()
    student.train()
    assert not teacher.module.training and not any(p.requires_grad for p in teacher.module.parameters())
    method = TokenKD(student, teacher)
    kd = method(batch)["kd"]
    kd.backward()
    assert float(kd) > 0 and all(p.grad is None for p in teacher.module.parameters())


def _recipe(tmp_path, lm_dir, **over) -> dict:
    text = tmp_path / "train.txt"
    text.write_text("\n\n".join(corpus(24)))
    tok_dir = tmp_path / "tok"
    return {"name": "t", "family": "llm", "output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"),
            "teacher": over.pop("teacher", {"path": str(lm_dir), "tokenizer": str(tok_dir)}),
            "student": over.pop("student", {"path": str(lm_dir), "lora": {"r": 4, "alpha": 8, "merge": True}}),
            "data": {"source": "text", "path": str(text), "seq_len": 32, "batch_size": 4, "eval_batch_size": 8,
                     "prompt_tokens": 4},
            "train": {"epochs": 1, "max_steps": 2}, "engine": {"device": "cpu", "progress": False},
            "eval": {"samples": 1, "sample_tokens": 4}, "methods": [{"name": "token_kd"}], **over}


@pytest.fixture
def lm_tok_dir(tmp_path, tiny_tok):
    """A model folder of the tiny BPE's vocabulary, and the tokenizer beside it (tmp_path/tok)."""
    tiny_tok.save_pretrained(tmp_path / "tok")
    d = tmp_path / "model"
    tiny_lm("llama", len(tiny_tok), hidden=24, seed=1).save_pretrained(d)
    tiny_tok.save_pretrained(d)
    return d


@pytest.mark.parametrize("where,value,field", [
    ("student.lora.r", 0, "student.lora.r"), ("student.dtype", "fp8", "student.dtype"),
    ("teacher.dtype", "half", "teacher.dtype"), ("student.lora.rank", 4, "rank"),
])
def test_bad_values_name_their_field(tmp_path, lm_dir, where, value, field):
    recipe = _recipe(tmp_path, lm_dir)
    section, *rest = where.split(".")
    node = recipe[section]
    for k in rest[:-1]:
        node = node[k]
    node[rest[-1]] = value
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(recipe)


@pytest.mark.parametrize("teacher,student,engine,field", [
    ({"path": "T"}, {"dtype": "bf16"}, {}, "student.dtype"),
    ({"student_base": True}, {"path": "S"}, {}, "teacher.student_base"),
    ({"student_base": True}, {"lora": {}}, {}, "teacher.student_base"),
    ({"student_base": True, "path": "T"}, {"path": "S", "lora": {}}, {}, "teacher.path"),
    ({"student_base": True, "dtype": "bf16"}, {"path": "S", "lora": {}}, {}, "teacher.dtype"),
    ({"path": "T", "offload_folder": "off"}, {}, {}, "teacher.offload_folder"),
    ({"path": "T", "device_map": "auto"}, {}, {"strategy": "fsdp"}, "teacher.device_map"),
    ({"path": "T"}, {"path": "S", "lora": {"quantize": "nf4"}}, {"strategy": "fsdp"}, "student.lora.quantize"),
])
def test_bad_combinations_name_the_field_and_the_fix(tmp_path, lm_dir, teacher, student, engine, field):
    recipe = _recipe(tmp_path, lm_dir, teacher=teacher, student=student)
    recipe["engine"].update(engine)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")) as e:
        load_config(recipe)
    assert "; " in str(e.value)  # the message goes on to say what to do


def test_lora_target_modules_refuse_the_output_layer_and_unknown_names(lm_dir):
    with pytest.raises(ConfigError, match="student.lora.target_modules.*output layer"):
        wrap_lora(load_causal_lm(str(lm_dir)), LMLoraConfig(target_modules=["q_proj", "lm_head"]))
    with pytest.raises(ConfigError, match="student.lora.target_modules"):
        wrap_lora(load_causal_lm(str(lm_dir)), LMLoraConfig(target_modules=["no_such_module"]))


def test_device_map_with_several_processes_is_refused(tmp_path, lm_tok_dir, monkeypatch):
    from distill.families.llm import runner

    monkeypatch.setattr("distill.dist.world_size", lambda: 2)
    cfg = load_config(_recipe(tmp_path, lm_tok_dir, teacher={"path": str(lm_tok_dir), "device_map": "cpu"}))
    with pytest.raises(ConfigError, match="teacher.device_map"):
        runner.load_teacher(cfg, torch.device("cpu"))


def test_lora_run_writes_the_adapter_and_the_merged_model(tmp_path, lm_tok_dir):
    """An end-to-end run: a bf16 teacher placed by a device_map, a bf16 LoRA student from student.path."""
    from transformers import AutoModelForCausalLM

    recipe = _recipe(tmp_path, lm_tok_dir, teacher={"path": str(lm_tok_dir), "dtype": "bf16", "device_map": "cpu"},
                     student={"path": str(lm_tok_dir), "dtype": "bf16", "lora": {"r": 4, "alpha": 8, "merge": True}})
    s = distill.run(recipe, log=lambda m: None)
    out = Path(s["run_dir"]) / "students" / "token_kd"
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert (out / "tokenizer.json").is_file() and (out / "merged" / "tokenizer.json").is_file()
    assert AutoModelForCausalLM.from_pretrained(str(out / "merged")).dtype == torch.bfloat16
    st = s["students"]["token_kd"]
    assert st["bits_per_byte"] > 0 and 0 < st["adapter_params"] < st["params"]
    again = distill.run(recipe, log=lambda m: None)  # resumed: the saved adapter is reloaded, not retrained
    assert again["students"]["token_kd"]["bits_per_byte"] == pytest.approx(st["bits_per_byte"], rel=1e-6)
    assert again["students"]["token_kd"]["adapter_params"] == st["adapter_params"]


def test_device_mapped_teacher_builds_the_cache_the_in_process_teacher_builds(tmp_path, lm_tok_dir):
    """teacher.device_map with teacher.cache_top_k: the teacher placed by accelerate writes the same
    cache, so the cached run's losses equal those of a run with the teacher loaded as usual."""
    from llm_helpers import kd_losses

    runs = {}
    for name, teacher in (("plain", {}), ("mapped", {"device_map": "cpu"})):
        (tmp_path / name).mkdir()
        recipe = _recipe(tmp_path / name, lm_tok_dir, teacher={"path": str(lm_tok_dir), "cache_top_k": 16, **teacher})
        recipe["engine"]["log_every"] = 1
        s = distill.run(recipe, log=lambda m: None)
        runs[name] = kd_losses(Path(s["run_dir"]))
        assert list((tmp_path / name).rglob("llm_teacher_outputs/*/meta.json"))
    assert runs["plain"] and runs["plain"] == pytest.approx(runs["mapped"], rel=1e-6)


def test_student_base_run_and_a_fresh_lora_base(tmp_path, lm_tok_dir):
    """teacher.student_base: every method's adapter goes on the one base, which is also the teacher; a
    LoRA student on a freshly built base saves that base beside the adapter."""
    from peft import PeftModel

    recipe = _recipe(tmp_path, lm_tok_dir, teacher={"student_base": True, "tokenizer": str(lm_tok_dir)},
                     student={"path": str(lm_tok_dir), "lora": {"r": 2}})
    recipe["methods"] = [{"name": "token_kd", "params": {"ce_weight": 1.0}}, {"name": "sft"},
                         {"name": "on_policy", "params": {"lmbda": 1.0, "max_new_tokens": 4}}]
    s = distill.run(recipe, log=lambda m: None)
    assert set(s["students"]) == {"token_kd", "sft", "on_policy"}
    assert s["students"]["token_kd"]["teacher_agreement"] > 0.9  # two steps away from its own teacher
    fresh = _recipe(tmp_path, lm_tok_dir, student={"arch": "llama", "hidden_size": 16, "num_layers": 1,
                                                   "num_heads": 2, "lora": {"r": 2}})
    fresh["output_dir"] = str(tmp_path / "runs2")
    out = Path(distill.run(fresh, log=lambda m: None)["run_dir"]) / "students" / "token_kd"
    base_path = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert Path(base_path) == (out / "base").resolve()
    from transformers import AutoModelForCausalLM

    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), str(out))


@pytest.mark.parametrize("model_type,expected", [
    ("llama", {"q_proj", "v_proj"}),      # peft's own default
    ("granite", {"q_proj", "v_proj"}),    # no peft default: the query and value projections
    ("phi3", {"qkv_proj"}),               # no peft default, a fused query-key-value projection
])
def test_lora_default_targets_cover_architectures_peft_has_no_default_for(model_type, expected):
    """student.lora without target_modules works on every architecture: peft's default where it has
    one, else the attention projections; the adapter merges to the adapted model's outputs."""
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS
    from transformers import AutoConfig, AutoModelForCausalLM

    assert (model_type in DEFAULTS) == (model_type == "llama")  # the case this covers, in this peft
    torch.manual_seed(0)
    cfg = AutoConfig.for_model(model_type, vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                               bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = wrap_lora(AutoModelForCausalLM.from_config(cfg), LMLoraConfig(r=2))
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in model.named_parameters() if "lora_A" in n}
    assert adapted == expected
    assert all(("lora_" in n) == p.requires_grad for n, p in model.named_parameters())
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    b = _batch()
    ref = _logits(model, b)
    assert torch.allclose(_logits(model.merge_and_unload(), b), ref, atol=1e-5)
