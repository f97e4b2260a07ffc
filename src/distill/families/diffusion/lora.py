"""LoRA students (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") through `peft`:
the student starts as the teacher and only low-rank adapters on `target_modules` are trained; every
base weight stays frozen, bit for bit.

    student.lora: {rank: 4, alpha: 4, target_modules: [to_q, to_k, to_v, to_out.0]}

A diffusers UNet (`UNetDenoiser`) gets its adapters on the UNet itself (module names as in
`unet.named_modules()`, e.g. `mid_block.attentions.0.to_q`, `conv1`); any other denoiser on itself.
A target matches a module whose name is the target or ends with "." + target (peft's rule).

    add_lora(student, cfg)                   # in place; the base frozen, adapters trainable
    save_lora(student, folder)               # adapter_model.safetensors + adapter_config.json
    load_lora(fresh_student, folder)         # the same adapters on a fresh copy of the base
    merge_lora(student)                      # in place: W + (alpha / rank) B A, adapters removed
"""
from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field
from torch import nn

from distill.config import Strict
from distill.errors import ConfigError, closest

ADAPTER_WEIGHTS, ADAPTER_CONFIG = "adapter_model.safetensors", "adapter_config.json"


class DiffusionLoraConfig(Strict):
    rank: int = Field(4, ge=1, description="rank r of each adapter")
    alpha: float = Field(4.0, gt=0, description="scale: the update is (alpha / rank) B A")
    target_modules: list[str] = Field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"], min_length=1,
                                      description="module names (or name suffixes) that get adapters")
    dropout: float = Field(0.0, ge=0, lt=1)


def require_peft():
    try:
        import peft
    except ImportError:
        raise ConfigError("student.lora: needs the `peft` package (pip install 'distill[diffusion]')") from None
    return peft


def lora_host(net: nn.Module) -> nn.Module:
    """The module that carries the adapters: a UNetDenoiser's UNet, else the net itself."""
    from distill.families.diffusion.unet import UNetDenoiser

    return net.unet if isinstance(net, UNetDenoiser) else net


def _check_targets(host: nn.Module, targets: list[str]) -> None:
    adaptable = (nn.Linear, nn.Conv2d, nn.Conv1d, nn.Embedding)
    names = [n for n, m in host.named_modules() if isinstance(m, adaptable)]
    for t in targets:
        if not any(n == t or n.endswith("." + t) for n in names):
            short = sorted({n.rsplit(".", 1)[-1] for n in names} | {n for n in names if n.endswith(".0")})
            near = closest(t, short)
            raise ConfigError(f"student.lora.target_modules: no Linear/Conv module named {t!r} in the "
                              f"{type(host).__name__}" + (f"; closest: {', '.join(near)}" if near else "")
                              + f". Adaptable modules: {', '.join(names[:12])}" + (" ..." if len(names) > 12 else ""))


def add_lora(net: nn.Module, cfg: DiffusionLoraConfig) -> nn.Module:
    """Inject LoRA adapters into `net` in place (fresh: B = 0, so the output is unchanged); every other
    weight gets requires_grad False. Returns net."""
    peft = require_peft()
    host = lora_host(net)
    _check_targets(host, cfg.target_modules)
    pcfg = peft.LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, target_modules=list(cfg.target_modules),
                           lora_dropout=cfg.dropout)
    peft.inject_adapter_in_model(pcfg, host)
    net.requires_grad_(False)
    for n, p in host.named_parameters():
        if "lora_" in n:
            p.requires_grad_(True)
    return net


def has_lora(net: nn.Module) -> bool:
    return any(".lora_" in n or n.startswith("lora_") for n, _ in net.named_parameters())


def save_lora(net: nn.Module, folder: str | Path) -> Path:
    """The adapters of `net` (peft's file layout): folder/adapter_model.safetensors, adapter_config.json."""
    peft = require_peft()
    from safetensors.torch import save_file

    host = lora_host(net)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().contiguous() for k, v in peft.get_peft_model_state_dict(host).items()}
    save_file(sd, str(folder / ADAPTER_WEIGHTS))
    host.peft_config["default"].save_pretrained(str(folder))
    return folder


def load_lora(net: nn.Module, folder: str | Path) -> nn.Module:
    """Inject the adapters saved in `folder` into `net` (the same base architecture) and load their weights."""
    peft = require_peft()
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / ADAPTER_WEIGHTS).is_file() or not (folder / ADAPTER_CONFIG).is_file():
        raise FileNotFoundError(f"lora: no adapters at {folder} (expected {ADAPTER_WEIGHTS} and {ADAPTER_CONFIG})")
    raw = json.loads((folder / ADAPTER_CONFIG).read_text())
    cfg = DiffusionLoraConfig(rank=raw["r"], alpha=raw["lora_alpha"], target_modules=sorted(raw["target_modules"]),
                              dropout=raw.get("lora_dropout", 0.0))
    add_lora(net, cfg)
    result = peft.set_peft_model_state_dict(lora_host(net), load_file(str(folder / ADAPTER_WEIGHTS)))
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    if missing or getattr(result, "unexpected_keys", []):
        raise ValueError(f"lora: adapters at {folder} do not fit this model (missing {missing[:3]}, "
                         f"unexpected {list(getattr(result, 'unexpected_keys', []))[:3]})")
    return net


def merge_lora(net: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put the plain base layer back (in place): the result
    has the base architecture's state_dict keys and the adapted outputs. Returns net."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    host = lora_host(net)
    for name, module in list(host.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent = host.get_submodule(name.rsplit(".", 1)[0]) if "." in name else host
            setattr(parent, name.rsplit(".", 1)[-1], module.get_base_layer())
    if hasattr(host, "peft_config"):
        del host.peft_config
    return net
