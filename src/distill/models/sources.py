"""Models from their own ecosystems, by name: `torchvision:<arch>`, `timm:<arch>`, `hf:<folder or hub id>`
and `python:<module>:<callable>`.

    build_sourced("timm:mobilenetv3_small_050", {}, input_shape=(3, 32, 32), num_classes=10)

Each source builds the model with its own API (`torchvision.models.get_model`, `timm.create_model`,
transformers' Auto classes, or any importable factory that returns an nn.Module), takes `pretrained`
weights through the ecosystem's own download (an offline failure says how to give a local file
instead), then `weights: PATH` loads a local state dict, and a head of the wrong size is replaced by
one for `num_classes`. The data the model was pretrained on is remembered as `distill_data_config`
(mean, std, input size) so the recipe's `normalize: model` can use it.
"""
from __future__ import annotations

import importlib
import inspect
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.errors import ConfigError, closest

SOURCES = ("torchvision", "timm", "hf", "python")
_PREFIXES = ("module.", "_orig_mod.", "model.", "student.")  # wrappers a saved state dict may carry


def source_of(name: str) -> str | None:
    """"timm" for "timm:resnet18"; None for a registered zoo name."""
    head, sep, _ = name.partition(":")
    return head if sep and head in SOURCES else None


def _offline_hint(name: str, err: Exception) -> ConfigError:
    return ConfigError(
        f"{name}: `pretrained: true` downloads the weights with the ecosystem's own loader, which failed "
        f"({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}). Offline, download the "
        "file elsewhere and give it as `weights: /path/to/file.safetensors` (or .pth) with `pretrained: false`, "
        "or point TORCH_HOME / HF_HOME at a cache that already holds it.")


# --------------------------------------------------------------------------- builders per source
def _torchvision(arch: str, params: dict, num_classes: int, pretrained: bool, where: str) -> nn.Module:
    try:
        import torchvision
    except ImportError:
        raise ConfigError(f"{where}: torchvision: models need torchvision (pip install 'distill[vision]').") from None
    try:
        builder = torchvision.models.get_model_builder(arch)
    except ValueError:
        names = torchvision.models.list_models()
        near = closest(arch, names)
        raise ConfigError(f"{where}: torchvision has no model {arch!r}."
                          + (f" Did you mean: {', '.join(near)}?" if near else "")
                          + " See torchvision.models.list_models().") from None
    if pretrained:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
        try:
            model = builder(weights=weights, **params)
        except (OSError, RuntimeError) as e:  # URLError is an OSError
            raise _offline_hint(f"{where}: torchvision:{arch}", e) from None
        t = weights.transforms()
        model.distill_data_config = {"mean": list(t.mean), "std": list(t.std),  # type: ignore[attr-defined]
                                     "resize": int(t.resize_size[0]), "size": int(t.crop_size[0])}
        return model
    if "num_classes" not in params:
        params = {**params, "num_classes": num_classes}
    return builder(weights=None, **params)


def _timm(arch: str, params: dict, num_classes: int, pretrained: bool, where: str) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise ConfigError(f"{where}: timm: models need timm (pip install 'distill[vision]').") from None
    if not timm.is_model(arch) and not arch.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
        near = closest(arch, timm.list_models())
        raise ConfigError(f"{where}: timm has no model {arch!r}." + (f" Did you mean: {', '.join(near)}?" if near else "")
                          + " See timm.list_models().")
    kw = {"num_classes": num_classes, **params}
    try:
        model = timm.create_model(arch, pretrained=pretrained, **kw)
    except (OSError, RuntimeError) as e:
        if pretrained or arch.startswith("hf"):
            raise _offline_hint(f"{where}: timm:{arch}", e) from None
        raise
    from timm.data import resolve_data_config

    dc = resolve_data_config({}, model=model)
    size = int(dc["input_size"][-1])
    model.distill_data_config = {"mean": list(dc["mean"]), "std": list(dc["std"]),  # type: ignore[attr-defined]
                                 "size": size, "resize": int(round(size / dc.get("crop_pct", 0.875)))}
    return model


def _hf_has_weights(folder: Path) -> bool:
    return any((folder / f).is_file() for f in ("model.safetensors", "model.safetensors.index.json",
                                                 "pytorch_model.bin", "pytorch_model.bin.index.json"))


class HFBackboneClassifier(nn.Module):
    """A transformers base model plus a linear head on its pooled output (pooler_output, else the
    mean of last_hidden_state over positions / the spatial map)."""

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        cfg = backbone.config
        width = getattr(cfg, "hidden_size", None) or (getattr(cfg, "hidden_sizes", None) or [None])[-1]
        if width is None:
            raise ConfigError(f"hf: cannot tell the width of {type(backbone).__name__} (no hidden_size in its config).")
        self.head = nn.Linear(int(width), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, ...) -> (B, C)
        out = self.backbone(x)
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            h = out.last_hidden_state  # (B, T, D) tokens or (B, D, H, W) maps
            pooled = h.mean(1) if h.dim() == 3 else h.mean((2, 3))
        return self.head(pooled.flatten(1))


def _hf(ref: str, params: dict, num_classes: int, pretrained: bool | None, where: str) -> nn.Module:
    try:
        import transformers
        from transformers import AutoConfig
    except ImportError:
        raise ConfigError(f"{where}: hf: models need transformers (pip install 'distill[llm]').") from None
    params = dict(params)
    task = params.pop("task", "auto")
    if task not in ("auto", "image", "sequence", "base"):
        raise ConfigError(f"{where}.params.task: {task!r} is not one of auto, image, sequence, base.")
    folder = Path(os.path.expanduser(ref))
    local = folder.is_dir()
    if not local and (ref.startswith((".", "/", "~")) or os.sep in ref.strip("/").split("/", 1)[-1]):
        raise ConfigError(f"{where}: hf:{ref}: no such folder. Give a folder written by save_pretrained, or a hub id "
                          "such as google/vit-base-patch16-224.")
    try:
        config = AutoConfig.from_pretrained(str(folder) if local else ref)
    except OSError as e:
        raise ConfigError(f"{where}: hf:{ref}: could not read its config ({str(e).splitlines()[0][:200]}). Offline, "
                          "download the model elsewhere and give its local folder: `name: hf:/path/to/folder`.") from None
    if pretrained is None:  # a folder's own weights if it has them; a hub id is downloaded
        pretrained = _hf_has_weights(folder) if local else True
    arches = " ".join(getattr(config, "architectures", None) or [])
    mtype = config.model_type
    from transformers.models.auto import modeling_auto as ma

    if task == "auto":
        if "ForImageClassification" in arches or (not arches and mtype in ma.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES):
            task = "image"
        elif "ForSequenceClassification" in arches:
            task = "sequence"
        elif mtype in ma.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES:
            task = "image"
        else:
            task = "base"
    cls = {"image": transformers.AutoModelForImageClassification,
           "sequence": transformers.AutoModelForSequenceClassification, "base": transformers.AutoModel}[task]
    src = str(folder) if local else ref
    if task != "base":
        head_kw = {"num_labels": num_classes}
        if getattr(config, "num_labels", None) != num_classes:
            config.num_labels = num_classes
            config.id2label = {i: str(i) for i in range(num_classes)}
            config.label2id = {str(i): i for i in range(num_classes)}
            head_kw["ignore_mismatched_sizes"] = True
    try:
        if pretrained:
            kw = {"config": config, **params}
            if task != "base":
                kw.update(ignore_mismatched_sizes=True)
            model = cls.from_pretrained(src, **kw)
        else:
            for k, v in params.items():
                setattr(config, k, v)
            model = cls.from_config(config)
    except OSError as e:
        raise _offline_hint(f"{where}: hf:{ref}", e) from None
    data_config = _hf_data_config(src, config)
    head_fresh = True if task == "base" else bool(head_kw.get("ignore_mismatched_sizes"))
    if task == "base":
        model = HFBackboneClassifier(model, num_classes)
    model.distill_hf_weights = bool(pretrained)  # type: ignore[attr-defined]
    model.distill_hf_head_fresh = head_fresh  # type: ignore[attr-defined]
    if data_config:
        model.distill_data_config = data_config  # type: ignore[attr-defined]
    return model


def _hf_data_config(src: str, config) -> dict | None:
    try:
        from transformers import AutoImageProcessor

        proc = AutoImageProcessor.from_pretrained(src)
    except Exception:  # no preprocessor_config.json (a text model, or a bare config)
        return None
    mean, std = getattr(proc, "image_mean", None), getattr(proc, "image_std", None)
    size = getattr(proc, "size", None) or {}
    side = size.get("height") or size.get("shortest_edge") if isinstance(size, dict) else size
    crop = getattr(proc, "crop_size", None)
    crop_side = (crop.get("height") if isinstance(crop, dict) else crop) if crop else None
    out: dict[str, Any] = {}
    if mean is not None and std is not None:
        out.update(mean=list(mean), std=list(std))
    if crop_side or side:
        out["size"] = int(crop_side or side)
        out["resize"] = int(side or crop_side)
    return out or None


def resolve_callable(ref: str, where: str) -> Any:
    """`module:attr.path` -> the object (e.g. `efficientnet_lite_pytorch:EfficientNet.from_name`)."""
    mod_name, sep, attr = ref.partition(":")
    if not sep or not mod_name or not attr:
        raise ConfigError(f"{where}: {ref!r} is not `module:callable` (e.g. python:my_models:build_net).")
    try:
        obj: Any = importlib.import_module(mod_name)
    except ImportError as e:
        raise ConfigError(f"{where}: cannot import module {mod_name!r} ({e}). Is it installed, or on PYTHONPATH?") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            near = closest(part, [n for n in dir(obj) if not n.startswith("_")])
            raise ConfigError(f"{where}: {mod_name} has no attribute {attr!r}."
                              + (f" Did you mean: {', '.join(near)}?" if near else ""))
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{where}: {ref} is not callable.")
    return obj


def _python(ref: str, params: dict, num_classes: int, pretrained: bool, where: str) -> nn.Module:
    fn = resolve_callable(ref, where)
    try:
        sig = inspect.signature(fn)
        accepts = set(sig.parameters)
        var_kw = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    except (TypeError, ValueError):
        accepts, var_kw = set(), False
    kw = dict(params)
    if pretrained:
        if "pretrained" not in accepts and not var_kw:
            raise ConfigError(f"{where}: python:{ref} takes no `pretrained` argument; give `weights: PATH` instead.")
        kw["pretrained"] = True
    try:
        model = fn(**kw)
    except TypeError as e:
        raise ConfigError(f"{where}.params: python:{ref} rejected its arguments {sorted(kw)}: {e}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{where}: python:{ref} returned a {type(model).__name__}, not an nn.Module.")
    return model


# --------------------------------------------------------------------------- weights and heads
def resolve_weights_path(value: str | os.PathLike, where: str) -> Path:
    """A local file, or `python:module:callable` returning one (weights that a package ships)."""
    s = str(value)
    if s.startswith("python:"):
        path = Path(resolve_callable(s[len("python:"):], where)())
    else:
        path = Path(os.path.expanduser(s))
    if not path.is_file():
        raise ConfigError(f"{where}: weights file {str(path)!r} does not exist. Give a .safetensors or .pth/.pt "
                          "state dict (a path, or python:module:function that returns one).")
    return path


def read_state_dict(path: Path, where: str) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors or .pth/.pt/.bin file, loaded without executing code."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # pickled code, or not a torch file
        raise ConfigError(f"{where}: {path} is not a plain state dict that loads with weights_only=True "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:160]}). Save it with "
                          "torch.save(model.state_dict(), path) or as .safetensors.") from None
    for key in ("state_dict", "model", "model_state_dict", "module"):  # common checkpoint wrappers
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"{where}: {path} holds no state dict (name -> tensor).")
    return obj


def _strip_prefixes(sd: dict[str, torch.Tensor], model_keys: set[str]) -> dict[str, torch.Tensor]:
    """Drop wrapper prefixes (`module.`, `_orig_mod.`, ...) the file has and the model lacks."""
    changed = True
    while changed and not (set(sd) & model_keys):
        changed = False
        for p in _PREFIXES:
            if sd and all(k.startswith(p) for k in sd):
                sd = {k[len(p):]: v for k, v in sd.items()}
                changed = True
    return sd


def head_name(model: nn.Module, example: torch.Tensor | None = None) -> str | None:
    """Name of the classification head: the last nn.Linear *called* in a forward pass on `example`
    (forward order, not registration order), or the last registered one without an example."""
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    if not linears:
        return None
    if example is None:
        return list(linears)[-1]
    order: list[str] = []
    handles = [m.register_forward_hook(lambda mod, a, o, n=n: order.append(n)) for n, m in linears.items()]
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return order[-1] if order else list(linears)[-1]


def load_weights(model: nn.Module, path: Path, where: str, *, head: str | None = None) -> list[str]:
    """Load a state dict into `model` strictly, tolerating wrapper prefixes. The head's tensors may
    differ in shape (a head for other classes: kept freshly initialised). Returns the keys skipped."""
    sd = read_state_dict(path, where)
    own = model.state_dict()
    sd = _strip_prefixes(sd, set(own))
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    wrong = sorted(k for k in set(sd) & set(own) if sd[k].shape != own[k].shape)
    head_keys = {k for k in wrong if head is not None and k.startswith(head + ".")}
    bad_shapes = [k for k in wrong if k not in head_keys]
    if missing or unexpected or bad_shapes:
        def show(keys):
            return ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")
        lines = [f"{where}: {path} does not match {type(model).__name__}:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {show(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {show(unexpected)}")
        if bad_shapes:
            lines.append("  wrong shapes: " + show([f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in bad_shapes]))
        lines.append("  Check the model name and params (the file must come from the same architecture).")
        raise ConfigError("\n".join(lines))
    for k in head_keys:
        sd[k] = own[k]
    model.load_state_dict(sd, strict=True)
    return sorted(head_keys)


def replace_head(model: nn.Module, name: str, num_classes: int) -> None:
    """Swap the nn.Linear at `name` for a fresh one with `num_classes` outputs."""
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attr)
    setattr(parent, attr, nn.Linear(old.in_features, num_classes, bias=old.bias is not None))


def example_input(model: nn.Module, input_shape: tuple[int, ...]) -> torch.Tensor:
    if getattr(model, "main_input_name", None) == "input_ids" or (
            hasattr(model, "backbone") and getattr(model.backbone, "main_input_name", None) == "input_ids"):
        return torch.zeros(2, *input_shape, dtype=torch.long)
    return torch.zeros(2, *input_shape)


def build_sourced(name: str, params: dict[str, Any], *, input_shape: tuple[int, ...], num_classes: int,
                  weights: str | os.PathLike | None = None, pretrained: bool | None = None,
                  where: str = "model") -> nn.Module:
    """Build `source:ref` with `params`, ecosystem weights (`pretrained`), local `weights`, and a head
    for `num_classes`. Raises ConfigError (naming `where`) on any bad input."""
    from distill.models.outputs import logits_of

    source = source_of(name)
    ref = name.split(":", 1)[1]
    if not ref:
        raise ConfigError(f"{where}.name: {name!r} names no model after the prefix.")
    params = dict(params or {})
    if source == "torchvision":
        model = _torchvision(ref, params, num_classes, bool(pretrained), where)
    elif source == "timm":
        model = _timm(ref, params, num_classes, bool(pretrained), where)
    elif source == "hf":
        model = _hf(ref, params, num_classes, pretrained, where)
    elif source == "python":
        model = _python(ref, params, num_classes, bool(pretrained), where)
    else:
        raise ConfigError(f"{where}.name: unknown source in {name!r}; use one of {', '.join(s + ':' for s in SOURCES)}.")
    example = example_input(model, input_shape)
    head = None
    try:
        head = head_name(model, example)
    except Exception as e:
        raise ConfigError(f"{where}: {name} cannot take inputs of shape {tuple(input_shape)} "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:200]}). Resize the data "
                          "(data.transforms.size) or pick a model for this input.") from None
    skipped: list[str] = []
    if weights is not None:
        skipped = load_weights(model, resolve_weights_path(weights, f"{where}.weights"), f"{where}.weights", head=head)
    with torch.no_grad():
        was = model.training
        model.eval()
        out_dim = logits_of(model(example)).shape[-1]
        model.train(was)
    # whether the weights came from somewhere (and cover the head): a teacher given so is used as is
    model.distill_pretrained = bool(pretrained or weights is not None  # type: ignore[attr-defined]
                                    or getattr(model, "distill_hf_weights", False))
    model.distill_head_fresh = bool(skipped) or out_dim != num_classes or bool(  # type: ignore[attr-defined]
        getattr(model, "distill_hf_head_fresh", False))
    if out_dim != num_classes:
        if source == "timm" and hasattr(model, "reset_classifier"):
            model.reset_classifier(num_classes)
        elif head is not None:
            replace_head(model, head, num_classes)
        else:
            raise ConfigError(f"{where}: {name} gives {out_dim} outputs and has no nn.Linear head to replace for "
                              f"{num_classes} classes; pass the class count in params.")
    return model


def peek_data_config(name: str, params: dict[str, Any] | None = None, pretrained: bool | None = None
                     ) -> dict[str, Any] | None:
    """The input a model was pretrained for (mean, std, size, resize), read without building it:
    timm's pretrained config, torchvision's weights meta (pretrained only), an HF image processor."""
    source = source_of(name)
    ref = name.split(":", 1)[1] if source else ""
    try:
        if source == "timm":
            import timm

            cfg = timm.get_pretrained_cfg(ref.split(".")[0] if not timm.is_model(ref) else ref)
            if cfg is None:
                return None
            cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
            size = int(cfg["input_size"][-1])
            return {"mean": list(cfg["mean"]), "std": list(cfg["std"]), "size": size,
                    "resize": int(round(size / cfg.get("crop_pct", 0.875)))}
        if source == "torchvision" and pretrained:
            import torchvision

            t = torchvision.models.get_model_weights(ref).DEFAULT.transforms()
            return {"mean": list(t.mean), "std": list(t.std), "resize": int(t.resize_size[0]), "size": int(t.crop_size[0])}
        if source == "hf":
            from transformers import AutoConfig

            src = str(Path(os.path.expanduser(ref))) if Path(os.path.expanduser(ref)).is_dir() else ref
            return _hf_data_config(src, AutoConfig.from_pretrained(src))
    except Exception:  # unknown names are reported when the model is built
        return None
    return None
