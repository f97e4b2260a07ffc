"""Capture intermediate outputs by module name, on unmodified models (forward hooks).

    with Taps(model, ["layer2", "layer3.0.conv1"]) as taps:
        logits = model(x)
    feats = taps["layer2"]            # (B, C, H, W), with autograd history

Names are normalised: the `module.` prefix of DDP and the `_orig_mod.` prefix of torch.compile
are stripped from both the requested names and the model's own names, so a recipe written for
a plain model works on a wrapped one (and a feature loss never silently reads nothing).
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from distill.errors import ConfigError, closest

_PREFIXES = ("module.", "_orig_mod.")


def normalize_name(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if name.startswith(p):
                name, changed = name[len(p):], True
        for p in _PREFIXES:  # wrappers nested inside containers: a.module.b -> a.b
            mid = "." + p
            if mid in name:
                name, changed = name.replace(mid, "."), True
    return name


def module_names(model: nn.Module) -> dict[str, nn.Module]:
    """Normalised name -> module, for every named submodule (the root is "")."""
    out: dict[str, nn.Module] = {}
    for name, mod in model.named_modules():
        n = normalize_name(name)
        if n in ("module", "_orig_mod"):
            n = ""
        out.setdefault(n, mod)
    return out


def find_module(model: nn.Module, name: str) -> nn.Module:
    mods = module_names(model)
    key = normalize_name(name)
    if key not in mods:
        near = closest(key, [m for m in mods if m])
        raise ConfigError(
            f"tap {name!r}: no module of that name in {type(model).__name__}."
            + (f" Closest: {', '.join(near)}." if near else "")
            + " Module names are those of model.named_modules()."
        )
    return mods[key]


def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    return out


class Taps:
    """Forward hooks that store the outputs of named modules for the duration of a `with` block.

    Taps can also stay registered (call `attach()` once, read after each forward, `detach()` at
    the end). `inputs=True` stores the module's first input instead of its output.
    """

    def __init__(self, model: nn.Module, names: Iterable[str], *, inputs: bool = False):
        self.model = model
        self.names = [normalize_name(n) for n in names]
        self.inputs = inputs
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles: list = []
        self._modules = {n: find_module(model, n) for n in self.names}  # fails early on bad names

    def _hook(self, name: str):
        def fn(module, args, out):
            self.outputs[name] = _first_tensor(args[0] if self.inputs else out)
        return fn

    def attach(self) -> Taps:
        if not self._handles:
            for n, m in self._modules.items():
                self._handles.append(m.register_forward_hook(self._hook(n)))
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def clear(self) -> None:
        self.outputs.clear()

    def __getitem__(self, name: str) -> torch.Tensor:
        key = normalize_name(name)
        if key not in self.outputs:
            raise KeyError(f"tap {name!r} captured nothing: was the model called inside the block, "
                           f"and does the forward pass reach that module?")
        return self.outputs[key]

    def __enter__(self) -> Taps:
        self.clear()
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()
