"""Name -> builder registries for models, datasets and methods.

    @register_model("mlp", family="classifier", description="multi-layer perceptron")
    def mlp(input_shape, num_classes, hidden=(256,)): ...

Each entry keeps its builder's signature; `params_model()` turns it into a pydantic model so
that a recipe's `params:` are checked (unknown keys, wrong types) before any work starts.
`distill list` reads these tables. Families register on import; `load_all()` imports them.
"""
from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from distill.errors import ConfigError, did_you_mean

FAMILIES = ("classifier", "llm", "diffusion", "dataset", "graph", "encoder")

# Modules whose import registers entries. Heavy third-party imports inside them stay lazy.
_PLUGIN_MODULES = [
    "distill.models",
    "distill.data",
    "distill.families.classifier",
    "distill.families.llm",
    "distill.families.diffusion",
    "distill.families.dataset",
    "distill.families.graph",
    "distill.families.encoder",
]


@dataclass
class Entry:
    name: str
    builder: Callable[..., Any]
    family: str
    description: str
    # arguments supplied by the runner, not by the recipe (e.g. input_shape, student)
    injected: tuple[str, ...] = field(default_factory=tuple)

    def params_model(self):
        """A pydantic model of the builder's recipe-settable keyword arguments (extra keys forbidden)."""
        from pydantic import ConfigDict, create_model

        target = self.builder.__init__ if inspect.isclass(self.builder) else self.builder
        sig = inspect.signature(target)
        try:
            hints = inspect.get_annotations(target, eval_str=True)
        except Exception:  # unresolvable forward refs: fall back to Any
            hints = {}
        fields: dict[str, Any] = {}
        for pname, p in sig.parameters.items():
            if pname in ("self", *self.injected) or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            ann = hints.get(pname, Any)
            default = ... if p.default is inspect.Parameter.empty else p.default
            fields[pname] = (ann, default)
        return create_model(
            f"{self.name}_params",
            __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True, protected_namespaces=(), allow_inf_nan=False),
            **fields,
        )

    def validate(self, params: dict[str, Any], where: str) -> dict[str, Any]:
        """Check `params` against the builder; return them with defaults filled in."""
        from pydantic import ValidationError

        try:
            model = self.params_model()(**(params or {}))
        except ValidationError as e:
            allowed = ", ".join(self.params_model().model_fields) or "(none)"
            lines = []
            for err in e.errors():
                loc = ".".join(str(x) for x in err["loc"])
                if err["type"] == "extra_forbidden":
                    lines.append(
                        f"{where}.{loc}: unknown key for {self.name!r}.{did_you_mean(str(err['loc'][0]), self.params_model().model_fields)} Allowed: {allowed}."
                    )
                else:
                    lines.append(f"{where}.{loc}: {err['msg']} (given: {err.get('input')!r}).")
            raise ConfigError("\n".join(lines)) from None
        return model.model_dump()


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[tuple[str, str], Entry] = {}

    def register(self, name: str, *, family: str, description: str, injected: tuple[str, ...] = ()):
        if family not in FAMILIES and family != "any":
            raise ValueError(f"unknown family {family!r}")

        def deco(fn):
            key = (family, name)
            if key in self._entries and self._entries[key].builder is not fn:
                raise ValueError(f"{self.kind} {name!r} is already registered for family {family!r}")
            self._entries[key] = Entry(name, fn, family, description.strip(), tuple(injected))
            return fn

        return deco

    def entries(self, family: str | None = None) -> list[Entry]:
        load_all()
        return sorted(
            (e for e in self._entries.values() if family is None or e.family in (family, "any")),
            key=lambda e: (e.family, e.name),
        )

    def names(self, family: str | None = None) -> list[str]:
        return [e.name for e in self.entries(family)]

    def get(self, name: str, family: str, where: str = "") -> Entry:
        load_all()
        for key in ((family, name), ("any", name)):
            if key in self._entries:
                return self._entries[key]
        choices = self.names(family)
        where = where or self.kind
        raise ConfigError(
            f"{where}: unknown {self.kind} {name!r} for family {family!r}.{did_you_mean(name, choices)}"
            f" Allowed: {', '.join(choices) or '(none)'}. See `distill list {self.kind}s`."
        )


models = Registry("model")
datasets = Registry("dataset")
methods = Registry("method")

register_model = models.register
register_dataset = datasets.register
register_method = methods.register

_loaded = False


def add_plugin_module(module: str) -> None:
    """Let another package register entries (imported on the next `load_all`)."""
    global _loaded
    if module not in _PLUGIN_MODULES:
        _PLUGIN_MODULES.append(module)
        _loaded = False


def load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in _PLUGIN_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:  # a family that exists but misses a dependency is a real error
                raise


# family name -> callable(cfg, *, resume: bool) -> summary dict
runners: dict[str, Callable[..., dict]] = {}


def register_runner(family: str):
    def deco(fn):
        runners[family] = fn
        return fn

    return deco


# saved-model folder loaders of the families: (marker file, callable(folder, device) -> nn.Module).
# `distill.models.io.load_model` tries them before its own formats, so the core names no family.
folder_loaders: list[tuple[str, Callable[..., Any]]] = []


def register_folder_loader(marker: str):
    """Register a loader for saved folders holding `marker` (e.g. sentence-transformers' modules.json)."""
    def deco(fn):
        folder_loaders.append((marker, fn))
        return fn

    return deco
