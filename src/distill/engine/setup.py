"""Devices, precision, optimisers and schedules of a training phase (and `unwrap` of wrapped modules)."""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from distill.config import OptimizerConfig, ScheduleConfig
from distill.errors import ConfigError, DistillError

_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


def resolve_device(name: str) -> str:
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("engine.device: 'cuda' was asked for but torch sees no CUDA device "
                          f"(torch {torch.__version__}). Use engine.device=cpu or install a CUDA build of torch.")
    if name == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError("engine.device: 'mps' is not available on this machine; use engine.device=cpu.")
    return name


def make_accelerator(device: str, precision: str):
    """An accelerate.Accelerator for these settings (its global state is reset if they changed)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    device = resolve_device(device)
    if precision == "fp16" and device != "cuda":
        raise ConfigError("engine.precision: fp16 needs a CUDA device (loss scaling); use bf16 or fp32 on CPU.")
    mp = _PRECISION[precision]
    state = AcceleratorState._shared_state
    if state and (state.get("_mixed_precision") != mp or str(state.get("device", "")) != device
                  and not str(state.get("device", "")).startswith(device)):
        AcceleratorState._reset_state(reset_partial_state=False)
    try:
        return Accelerator(cpu=(device == "cpu"), mixed_precision=mp)
    except ValueError:
        AcceleratorState._reset_state(reset_partial_state=False)
        return Accelerator(cpu=(device == "cpu"), mixed_precision=mp)


def build_optimizer(cfg: OptimizerConfig, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The recipe's optimiser over the trainable `params`. With `weight_decay_1d: false` and a weight
    decay, the 1-d parameters (biases, norm weights) form a second group without decay."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise DistillError("nothing to optimise: no parameter requires grad")
    if cfg.weight_decay and not cfg.weight_decay_1d:
        groups: list = [{"params": [p for p in params if p.ndim > 1]},
                        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
        params = [g for g in groups if g["params"]]
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.nesterov and cfg.momentum > 0)
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def schedule_factor(cfg: ScheduleConfig, step: int, total: int) -> float:
    """Multiplier of the base learning rate at optimiser step `step` of `total`."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.name == "constant" or total <= 0:
        return 1.0
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    if cfg.name == "cosine":
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if cfg.name == "linear":
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * (1 - progress)
    return cfg.gamma if progress >= cfg.step_fraction else 1.0  # "step"


def build_scheduler(cfg: ScheduleConfig, optimizer: torch.optim.Optimizer, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: schedule_factor(cfg, s, total_steps))


def unwrap(module: nn.Module) -> nn.Module:
    """The model under DDP (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while True:
        if hasattr(module, "_orig_mod"):
            module = module._orig_mod
        elif isinstance(module, nn.parallel.DistributedDataParallel) or (
            type(module).__name__ in ("DistributedDataParallel", "FullyShardedDataParallel") and hasattr(module, "module")
        ):
            module = module.module
        else:
            return module

