"""LoRA students (peft) and the teacher that is the student's own base.

`wrap_lora` puts a LoRA adapter (Hu et al. 2022) on a causal LM with peft's `get_peft_model`: the
base is frozen, the adapter's A and B train (kept in fp32 over a bf16/fp16 base). A student is
saved the way peft saves it (`adapter_config.json` + `adapter_model.safetensors`), and with
`merge: true` also as a plain transformers folder with the adapter merged in (`merged/`).

`base_view` is the teacher of `teacher.student_base`: a second module tree of the same class whose
parameters and buffers are the base model's own tensors (no second copy of the weights), built
before the adapter is added. peft adds the adapter by replacing modules inside the base's tree; the
view's tree is not touched, so running it is running the base with the adapter disabled (what
`PeftModel.disable_adapter()` gives), in its own eval mode, while the student trains. Its weights
fingerprint is the base's, so caches keyed on it stay valid: the base never changes.
"""
from __future__ import annotations

import contextlib
import copy
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.errors import ConfigError
from distill.teacher import Teacher

def _target_modules(cfg, model: nn.Module | None = None) -> Any:
    """`student.lora.target_modules`, or for None peft's default for the architecture; where peft has
    none (e.g. Phi-3, Granite, Cohere, OLMo2, SmolLM3), the attention's query and value projections
    (`q_proj`, `v_proj`, as peft's defaults for Llama-like models), else its fused query-key-value
    projection, else every linear layer but the output layer (peft's `all-linear`)."""
    t = cfg.target_modules
    if t is not None or model is None:
        return list(t) if isinstance(t, list) else t
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    if getattr(getattr(model, "config", None), "model_type", None) in DEFAULTS:
        return None
    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    if {"q_proj", "v_proj"} <= leaves:
        return ["q_proj", "v_proj"]
    fused = [n for n in ("qkv_proj", "query_key_value", "c_attn", "Wqkv") if n in leaves]
    return fused[:1] or "all-linear"


@contextlib.contextmanager
def _quiet_peft():
    """peft reads a property transformers has renamed (a FutureWarning with nothing to act on)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def wrap_lora(model: nn.Module, cfg) -> nn.Module:
    """`model` with a LoRA adapter (peft `PeftModel`); only the adapter requires grad. `cfg`: an
    `LMLoraConfig` (r, alpha, dropout, target_modules)."""
    from peft import LoraConfig, get_peft_model

    from transformers.pytorch_utils import Conv1D  # GPT-2's fused projections store W transposed

    targets = _target_modules(cfg, model)
    lc = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                    task_type="CAUSAL_LM", fan_in_fan_out=any(isinstance(m, Conv1D) for m in model.modules()))
    head = model.get_output_embeddings()
    try:
        with _quiet_peft():
            peft_model = get_peft_model(model, lc)
    except ValueError as e:
        raise ConfigError(f"student.lora.target_modules: {targets!r}: {str(e).splitlines()[0]}") from None
    if model.get_output_embeddings() is not head:
        # the chunked losses read the head's weight directly and would not see its adapter
        peft_model.unload()
        raise ConfigError(f"student.lora.target_modules: {targets!r} includes the output layer, whose weight the "
                          "chunked losses read directly (an adapter there would get no gradient); name the "
                          "attention/MLP projections only.")
    return peft_model


def adapter_parameters(model: nn.Module) -> int:
    """Number of adapter parameters (trainable or, loaded for inference, not)."""
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)


def load_adapter(base: nn.Module, folder: str | Path) -> nn.Module:
    """The base with the adapter saved in `folder` (peft `PeftModel.from_pretrained`)."""
    from peft import PeftModel

    with _quiet_peft():
        return PeftModel.from_pretrained(base, str(folder))


def save_adapter(student: nn.Module, tok, out: Path, *, merge: bool, base_path: str | None = None,
                 dtype: str = "fp32") -> None:
    """The adapter (and tokenizer) into `out`; with `merge`, the merged model into `out/merged`
    (from a copy: the student, whose base may be the teacher, stays as it is). `base_path` is written
    into adapter_config.json as the base to load the adapter on; `dtype`, the merged weights' (the
    student's) when the base is quantised."""
    if base_path is not None:
        for c in student.peft_config.values():
            c.base_model_name_or_path = base_path
    student.save_pretrained(out)
    tok.save_pretrained(out)
    if merge:
        from distill.families.llm.models import is_quantized

        base = student.get_base_model()
        if is_quantized(base):
            # merged into the base at full precision (the weights it was quantised from), not into
            # the quantised layers, so `merged/` is a plain model any tool loads
            from distill.families.llm.models import load_causal_lm

            if base_path is None:
                raise ConfigError("student.lora.merge: a quantised base is merged from its source, which is unknown.")
            full = load_causal_lm(base_path, "student.path", dtype=dtype)
            merged = load_adapter(full, out).merge_and_unload()
        else:
            merged = copy.deepcopy(student).merge_and_unload()
        merged.save_pretrained(out / "merged")
        tok.save_pretrained(out / "merged")
        del merged


def base_view(model: nn.Module) -> nn.Module:
    """A module of `model`'s class whose parameters, buffers and tensor attributes are `model`'s own
    objects (same storage), in eval mode, with no gradients. Build it before an adapter is added.
    A quantised base is copied module by module with every parameter and buffer kept as it is and
    bitsandbytes' own layers shared whole: they keep quantisation state on the layer as well as on
    the weight (int8 moves its row scales from the weight to the layer on the first forward), so two
    layers over one weight would disagree. peft wraps such a layer (as `base_layer`) rather than
    replacing it, so the view's tree still runs it without the adapter."""
    from distill.families.llm.models import is_quantized

    if is_quantized(model):
        shared = {id(t): t for t in [*model.parameters(), *model.buffers()]}
        shared.update({id(m): m for m in model.modules() if type(m).__module__.startswith("bitsandbytes")})
        view = copy.deepcopy(model, memo=dict(shared))
        view.eval()
        view.requires_grad_(False)
        return view
    with torch.device("meta"):
        view = type(model)(copy.deepcopy(model.config))
    mods = dict(view.named_modules())
    for name, sub in model.named_modules():
        target = mods.get(name)
        if target is None or type(target) is not type(sub):
            raise ConfigError(f"teacher.student_base: cannot share {type(model).__name__}'s module {name!r}; this "
                              "architecture is not supported in that mode (give teacher.path instead).")
        target._parameters.update(sub._parameters)
        target._buffers.update(sub._buffers)
        for k, v in vars(sub).items():  # tensors kept as plain attributes (e.g. rotary tables)
            if isinstance(v, torch.Tensor) and k not in sub._parameters and k not in sub._buffers:
                object.__setattr__(target, k, v)
    left = [n for n, t in [*view.named_parameters(), *view.named_buffers()] if t.is_meta]
    if left:
        raise ConfigError(f"teacher.student_base: {type(model).__name__} has tensors that cannot be shared "
                          f"({', '.join(left[:3])}); give teacher.path instead.")
    if getattr(model, "generation_config", None) is not None:
        view.generation_config = copy.deepcopy(model.generation_config)
    view.eval()
    view.requires_grad_(False)
    return view



class BaseTeacher(Teacher):
    """The students' frozen base as the teacher: `module` is `base_view(base)`, `base` the model each
    method's adapter is added to (and removed from afterwards)."""

    def __init__(self, base: nn.Module):
        super().__init__(base_view(base), name="teacher (student base)")
        self.base = base

    def to(self, device) -> BaseTeacher:
        from distill.families.llm.models import is_quantized

        if not is_quantized(self.base):  # a quantised base was placed on its device as it loaded
            self.base.to(device)
        self._module = base_view(self.base)  # buffers moved by `.to` are new tensors: share them again
        return self

    def shard(self) -> BaseTeacher:
        raise ConfigError("teacher.student_base: the teacher's weights are the student's; it cannot be sharded "
                          "apart from it (use engine.strategy=ddp).")


def student_base_of(teacher: Teacher | None) -> nn.Module | None:
    """The base the students' adapters go on when the teacher is that base, else None."""
    return teacher.base if isinstance(teacher, BaseTeacher) else None
