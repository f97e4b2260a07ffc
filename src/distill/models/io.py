"""Build models (our zoo by name, or a user's by source prefix), save them in their ecosystem's
format, and load them back in one call.

Saved folders:
- zoo models: `model.safetensors` + `config.json` (name, params, shapes);
- transformers models: `save_pretrained` (`config.json` + `model.safetensors`; `from_pretrained` loads
  them) + `distill.json`;
- timm models: timm's own folder (`config.json` + `model.safetensors`; `timm.create_model("local-dir:PATH")`
  loads it) + `distill.json`;
- torchvision and `python:` models: `model.safetensors` (a plain state dict) + `distill.json`.
`load_model` rebuilds any of them from the spec; no code is executed from the files.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.registry import models
from distill.utils import atomic_write_bytes, atomic_write_text

SPEC = "distill.json"


def build_model(name: str, params: dict[str, Any], input_shape: tuple[int, ...], num_classes: int,
                family: str = "classifier", *, weights: str | os.PathLike | None = None,
                pretrained: bool | None = None, where: str = "model") -> nn.Module:
    """A zoo model (`mlp`, `convnet`, ...) or a sourced one (`timm:resnet18`, `hf:PATH`, ...), with
    optional local `weights` and ecosystem `pretrained` weights (sourced models)."""
    from distill.errors import ConfigError
    from distill.models.sources import build_sourced, head_name, load_weights, resolve_weights_path, source_of

    if source_of(name):
        model = build_sourced(name, params, input_shape=tuple(input_shape), num_classes=num_classes,
                              weights=weights, pretrained=pretrained, where=where)
    else:
        if pretrained:
            raise ConfigError(f"{where}.pretrained: {name!r} is a model of distill's zoo and has no pretrained "
                              "weights; give `weights: PATH`, or use a sourced model (torchvision:, timm:, hf:).")
        entry = models.get(name, family, where=f"{where}.name")
        params = entry.validate(params, f"{where}.params")
        model = entry.builder(tuple(input_shape), num_classes, **params)
        if weights is not None:
            load_weights(model, resolve_weights_path(weights, f"{where}.weights"), f"{where}.weights",
                         head=head_name(model))
    model.distill_spec = {"name": name, "params": dict(params or {}), "input_shape": list(input_shape),  # type: ignore[attr-defined]
                          "num_classes": num_classes, "family": family}
    if getattr(model, "distill_data_config", None):
        model.distill_spec["data_config"] = model.distill_data_config  # type: ignore[attr-defined]
    return model


def build_from_config(cfg, input_shape: tuple[int, ...], num_classes: int, *, family: str = "classifier",
                      where: str = "model") -> nn.Module:
    """`build_model` from a recipe's ModelConfig (name, params, weights, pretrained, num_classes)."""
    n = cfg.num_classes or num_classes
    return build_model(cfg.name, cfg.params, input_shape, n, family, weights=getattr(cfg, "weights", None),
                       pretrained=getattr(cfg, "pretrained", None), where=where)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _is_transformers(model: nn.Module) -> bool:
    try:
        from transformers import PreTrainedModel
    except ImportError:
        return False
    return isinstance(model, PreTrainedModel)


def _move_in(tmp: Path, folder: Path) -> None:
    """Move every file written in `tmp` into `folder`, each replaced atomically."""
    for p in sorted(tmp.rglob("*")):
        if p.is_file():
            dest = folder / p.relative_to(tmp)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(p, dest)


def save_model(model: nn.Module, folder: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Save `model` into `folder` in its ecosystem's format (see the module docstring), atomically
    file by file. Returns the weights file."""
    from safetensors.torch import save

    from distill.models.sources import source_of

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    spec = dict(getattr(model, "distill_spec", {}))
    spec.update(extra or {})
    source = source_of(spec.get("name", "")) if spec.get("name") else None
    if source is None and not spec:
        source = "hf" if _is_transformers(model) else None
    if source is None:  # our zoo: the original layout
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        atomic_write_bytes(folder / "model.safetensors", save(state))
        atomic_write_text(folder / "config.json", json.dumps(spec, indent=2))
        return folder / "model.safetensors"
    spec["source"] = source
    with tempfile.TemporaryDirectory(dir=folder, prefix=".tmp-") as tmp_s:
        tmp = Path(tmp_s)
        if source == "hf" and _is_transformers(model):
            model.save_pretrained(tmp, safe_serialization=True)
            spec["hf_class"] = type(model).__name__
        elif source == "timm":
            from timm.models import save_for_hf

            save_for_hf(model, str(tmp), safe_serialization=True)
        else:
            if source == "hf":  # a base model plus our head: keep the backbone's config to rebuild it
                spec["hf_config"] = model.backbone.config.to_dict()
            state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            (tmp / "model.safetensors").write_bytes(save(state))
        (tmp / SPEC).write_text(json.dumps(spec, indent=2, default=str))
        _move_in(tmp, folder)
    return folder / "model.safetensors"


def read_spec(folder: Path) -> dict[str, Any] | None:
    """The spec of a folder written by `save_model`, or None if it holds none."""
    if (folder / SPEC).is_file():
        return json.loads((folder / SPEC).read_text())
    if (folder / "config.json").is_file():
        spec = json.loads((folder / "config.json").read_text())
        if "name" in spec and "input_shape" in spec:
            return spec
    return None


def load_model(folder: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model saved by `save_model` and load its weights (no code is executed from the files)."""
    from safetensors.torch import load_file

    from distill.errors import DistillError

    folder = Path(folder)
    from distill import registry

    registry.load_all()
    for marker, loader in registry.folder_loaders:  # a family's own format (an encoder's sentence-transformers folder)
        if (folder / marker).is_file():
            return loader(folder, device=device)
    spec = read_spec(folder) if folder.is_dir() else None
    if spec is None or not (folder / "model.safetensors").is_file():
        raise DistillError(f"{folder}: expected model.safetensors with distill.json or config.json (written by distill).")
    if spec.get("hf_class"):
        import transformers

        model = getattr(transformers, spec["hf_class"]).from_pretrained(str(folder))
    elif spec.get("hf_config"):
        from transformers import AutoConfig, AutoModel

        from distill.models.sources import HFBackboneClassifier

        cfg = dict(spec["hf_config"])
        config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
        model = HFBackboneClassifier(AutoModel.from_config(config), spec["num_classes"])
        model.load_state_dict(load_file(str(folder / "model.safetensors")))
    else:
        model = build_model(spec["name"], spec["params"], tuple(spec["input_shape"]), spec["num_classes"],
                            spec.get("family", "classifier"), pretrained=False)
        model.load_state_dict(load_file(str(folder / "model.safetensors")))
    model.distill_spec = {k: v for k, v in spec.items() if k not in ("hf_class", "hf_config", "source")}  # type: ignore[attr-defined]
    if spec.get("data_config"):
        model.distill_data_config = spec["data_config"]  # type: ignore[attr-defined]
    return model.to(device).eval()


def copy_model_folder(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("checkpoints", ".tmp-*"))
