"""One way to take logits out of whatever a model returns.

Our zoo returns a tensor; Hugging Face models return a `ModelOutput` with `.logits`; torchvision's
Inception/GoogLeNet return a named tuple in training mode, timm's distilled ViTs a tuple
(head, distillation head). Every student call, the teacher, evaluation and the caches go through
`logits_of`, so any of these can be a teacher or a student.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def logits_of(out: Any) -> torch.Tensor:
    """The (B, C) logits in a model's output: a tensor as is, `.logits` of a ModelOutput, the
    "logits" entry of a dict, or the first element of a tuple/list (the main head)."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)  # transformers ModelOutput (also a Mapping: check first)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, Mapping) and isinstance(out.get("logits"), torch.Tensor):
        return out["logits"]
    if isinstance(out, (tuple, list)) and out:
        return logits_of(out[0])
    raise TypeError(f"cannot find logits in a model output of type {type(out).__name__}: return a tensor, "
                    "a tuple whose first element is the logits, or an object with a `.logits` tensor.")
