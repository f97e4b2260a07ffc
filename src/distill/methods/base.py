"""The shape every classifier method shares.

A method is an nn.Module that owns the student (a submodule, so it is optimised and saved) and
any extra modules it needs (projectors, queues, discriminators): the engine optimises
`method.parameters()`. The teacher is held by reference (a `Teacher`, not a submodule).

    method = KD(student, teacher, temperature=4.0, alpha=0.9)
    method.setup(example_batch)       # build modules whose shapes are known only at run time
    terms = method(batch)             # {"kd": ..., "ce": ...}; the engine weights and sums them
"""
from __future__ import annotations

from typing import Any

from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import nn

from distill.errors import ConfigError
from distill.losses import divergence, sparse_divergence
from distill.models.outputs import logits_of
from distill.teacher import CachedOutputs, Teacher, TeacherCache


# whether every training label of the phase under way is a class (no -1 of semi-supervised data):
# set by the classifier's train_phase from its data set, so that the CE skips the masking ops
LABELS_COMPLETE: ContextVar[bool] = ContextVar("labels_complete", default=False)


@contextmanager
def labels_complete(flag: bool):
    token = LABELS_COMPLETE.set(flag)
    try:
        yield
    finally:
        LABELS_COMPLETE.reset(token)


def masked_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean CE over samples with a label (y >= 0); 0 (not NaN) when the batch has none. (B, C), (B,).
    Soft targets (B, C) (MixUp / CutMix) give the mean soft cross-entropy. In a phase whose data
    has no unlabelled sample (`labels_complete`), the plain mean CE, the same value in fewer ops."""
    if y.dim() == 2:
        return -(y.float() * F.log_softmax(logits.float(), -1)).sum(-1).mean()
    if LABELS_COMPLETE.get():
        return F.cross_entropy(logits.float(), y)
    total = F.cross_entropy(logits.float(), y, ignore_index=-1, reduction="sum")
    return total / (y >= 0).sum().clamp(min=1)


class ClassifierMethod(nn.Module):
    """Base class. Subclasses set `needs_teacher`, `supports_cache` and implement `forward`."""

    needs_teacher: bool = True
    supports_cache: bool = False  # True when only the teacher's logits are used
    supports_feature_cache: bool = False  # True for FeatureMethods (tapped teacher layers)
    hard_labels: bool = False  # True when labels are used as class indices beyond the CE (no MixUp/CutMix)

    def __init__(self, student: nn.Module, teacher: Teacher | None):
        super().__init__()
        if self.needs_teacher and teacher is None:
            raise ValueError(f"{type(self).__name__} needs a teacher")
        self.student = student
        self._teacher = teacher  # plain attribute: not registered, never optimised
        self.cache: TeacherCache | None = None
        self.weights: dict[str, float] = {}
        self.step = 0
        self.epoch = 0

    @property
    def teacher(self) -> Teacher | None:
        return self._teacher

    def setup(self, batch: dict[str, torch.Tensor]) -> None:
        """Called once with an example batch before the optimiser is built."""

    def on_step(self, step: int, epoch: int) -> None:
        self.step, self.epoch = step, epoch

    def teacher_outputs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | CachedOutputs:
        """Teacher logits (B, C), or the cached top-k when a cache is attached."""
        if self.cache is not None:
            return self.cache.lookup_batch(batch, device=batch["x"].device)
        assert self._teacher is not None
        return logits_of(self._teacher(batch["x"]))

    def student_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The student's logits (B, C), whatever its output type (tensor, tuple, HF ModelOutput)."""
        return logits_of(self.student(x))

    def ensure_taps(self, x: torch.Tensor) -> None:
        """Resolve and attach every tap set the method holds with an example input (`penultimate` by
        forward order; taps move to modules replaced since, e.g. by SyncBatchNorm conversion)."""
        for v in list(vars(self).values()):
            if getattr(v, "is_layer_taps", False):
                v.ensure(x)

    def close(self) -> None:
        """Called when the training phase ends: removes the hooks of every tap set the method holds
        (on the student, the teacher and any helper model), so none stay on the user's modules."""
        for v in list(vars(self).values()):
            if getattr(v, "is_layer_taps", False):
                v.detach()

    def kd_loss(self, student_logits: torch.Tensor, t_out: torch.Tensor | CachedOutputs, temperature: float,
                kind: str = "forward_kl") -> torch.Tensor:
        """T^2-scaled divergence (Hinton et al. 2015) against dense or cached teacher outputs."""
        if isinstance(t_out, CachedOutputs):
            d = sparse_divergence(student_logits, t_out.indices, t_out.logprobs, kind, temperature=temperature)  # type: ignore[arg-type]
        else:
            d = divergence(student_logits, t_out, kind, temperature=temperature)  # type: ignore[arg-type]
        return d * temperature**2

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.hparams().items())

    def hparams(self) -> dict[str, Any]:
        return {}


def dense_teacher_logits(t_out: torch.Tensor | CachedOutputs, num_classes: int, temperature: float) -> torch.Tensor:
    """Teacher logits (B, C), up to a per-row shift, from live outputs or a full-k cache.

    A cache holds log-probs at T; T * log-probs = logits - T * logsumexp: softmax at any
    temperature and z-scores are unchanged by that shift.
    """
    if not isinstance(t_out, CachedOutputs):
        return t_out
    if t_out.indices.shape[-1] < num_classes:
        raise ConfigError("this method needs the teacher's full distribution: set teacher.cache_top_k to "
                          f"the number of classes ({num_classes}) or leave it unset.")
    out = torch.empty(t_out.indices.shape[0], num_classes, device=t_out.logprobs.device)
    return out.scatter_(1, t_out.indices, t_out.logprobs * temperature)
