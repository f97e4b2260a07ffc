"""Build registered models, save them (safetensors + config.json), load them back in one call."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.registry import models
from distill.utils import atomic_write_bytes, atomic_write_text


def build_model(name: str, params: dict[str, Any], input_shape: tuple[int, ...], num_classes: int,
                family: str = "classifier") -> nn.Module:
    entry = models.get(name, family, where="model.name")
    params = entry.validate(params, "model.params")
    model = entry.builder(tuple(input_shape), num_classes, **params)
    model.distill_spec = {"name": name, "params": params, "input_shape": list(input_shape),  # type: ignore[attr-defined]
                          "num_classes": num_classes, "family": family}
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_model(model: nn.Module, folder: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write `model.safetensors` and `config.json` (name, params, shapes) into `folder`, atomically."""
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    spec = dict(getattr(model, "distill_spec", {}))
    spec.update(extra or {})
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(folder / "model.safetensors", save(state))
    atomic_write_text(folder / "config.json", json.dumps(spec, indent=2))
    return folder / "model.safetensors"


def load_model(folder: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model saved by `save_model` and load its weights (no code is executed from the files)."""
    from safetensors.torch import load_file

    from distill.errors import DistillError

    folder = Path(folder)
    cfg_path, w_path = folder / "config.json", folder / "model.safetensors"
    if not cfg_path.is_file() or not w_path.is_file():
        raise DistillError(f"{folder}: expected config.json and model.safetensors (written by distill).")
    spec = json.loads(cfg_path.read_text())
    model = build_model(spec["name"], spec["params"], tuple(spec["input_shape"]), spec["num_classes"],
                        spec.get("family", "classifier"))
    model.load_state_dict(load_file(str(w_path), device=str(device)))
    return model.to(device).eval()
