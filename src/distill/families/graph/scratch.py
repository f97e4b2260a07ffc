"""The plain MLP baseline: cross-entropy on the labelled nodes only, no graph, no teacher."""
from __future__ import annotations

from torch import Tensor

from distill.families.graph.base import GraphMethod, masked_cross_entropy
from distill.registry import register_method


@register_method("scratch", family="graph", description="MLP on node features and the labelled nodes only (no teacher)",
                 injected=("student", "teacher"))
class Scratch(GraphMethod):
    needs_teacher = False

    def __init__(self, student, teacher=None):
        super().__init__(student, None)
        self.weights = {"ce": 1.0}

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        idx = batch["idx"]
        return {"ce": masked_cross_entropy(self.student_logits(idx), self.labels(idx))}
