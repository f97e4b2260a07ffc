"""The shape every graph method shares (GNN -> MLP distillation).

A method is an nn.Module that owns the student MLP (a submodule: optimised and saved). The GNN
teacher is held by reference (a frozen `Teacher`). `attach(ctx)` hands it the observed graph,
once, before training; the teacher's soft labels over that graph are computed there, once
(the teacher is frozen, so they never change). A batch is {"idx": (B,) node ids}.

    method = GLNN(student, teacher, lam=0.0)
    method.attach(ctx)
    terms = method(batch)        # {"ce": ..., "kd": ...}; the engine weights and sums them
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.families.graph.ops import GraphOps
from distill.teacher import Teacher


@dataclass
class NodeContext:
    """What a learner sees: the observed graph. y is -1 on nodes whose label it may not use."""

    x: Tensor          # (N, F) float, dense or sparse COO
    y: Tensor          # (N,) long, -1 = unlabelled
    ops: GraphOps      # the observed graph's operators
    nodes: Tensor      # (M,) node ids the distillation runs over (all observed nodes)

    def to(self, device) -> NodeContext:
        return NodeContext(self.x.to(device), self.y.to(device), self.ops.to(device), self.nodes.to(device))


def masked_cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """Mean CE over nodes with a label (y >= 0); 0, not NaN, when none has one. (B, C), (B,)."""
    labeled = y >= 0
    ce = F.cross_entropy(logits.float(), y.clamp(min=0), reduction="none")
    return (ce * labeled).sum() / labeled.sum().clamp(min=1)


class GraphMethod(nn.Module):
    """Base class. Subclasses set `needs_teacher` and implement `forward`."""

    needs_teacher: bool = True

    def __init__(self, student: nn.Module, teacher: Teacher | None):
        super().__init__()
        if self.needs_teacher and teacher is None:
            raise ValueError(f"{type(self).__name__} needs a teacher")
        self.student = student
        self._teacher = teacher  # plain attribute: never a submodule, never optimised
        self.ctx: NodeContext | None = None
        self.teacher_logits: Tensor | None = None  # (N, C), fixed
        self.weights: dict[str, float] = {}

    def attach(self, ctx: NodeContext) -> None:
        """Give the method the observed graph; precompute the teacher's logits on it."""
        self.ctx = ctx
        if self._teacher is not None:
            self.teacher_logits = self._teacher(ctx.x, ctx.ops).float()

    def student_logits(self, idx: Tensor) -> Tensor:  # (B,) -> (B, C)
        assert self.ctx is not None, "attach() was not called"
        return self.student(self.ctx.x.index_select(0, idx))  # x may be a sparse COO tensor

    def labels(self, idx: Tensor) -> Tensor:
        assert self.ctx is not None
        return self.ctx.y[idx]

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        raise NotImplementedError

    def hparams(self) -> dict[str, Any]:
        return {}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.hparams().items())
