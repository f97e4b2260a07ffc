"""distill: knowledge distillation across the field.

`import distill` stays light: torch and the families load on first use.

    import distill
    summary = distill.run("recipes/quickstart.yaml", overrides=["train.epochs=5"])
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "run": ("distill.api", "run"),
    "load_config": ("distill.config", "load_config"),
    "load_student": ("distill.api", "load_student"),
    "Distiller": ("distill.api", "Distiller"),
    "Teacher": ("distill.teacher", "Teacher"),
    "Taps": ("distill.taps", "Taps"),
    "Engine": ("distill.engine", "Engine"),
    "registry": ("distill.registry", None),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'distill' has no attribute {name!r}")
    import importlib

    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value
