"""GLNN (Zhang, Liu, Sun, Shah 2022, "Graph-less Neural Networks: Teaching Old MLPs New Tricks
via Distillation", eq. 1):

    L = lam * sum_{v in V_L} CE(y_v, z_v) + (1 - lam) * sum_{v in V} KL(p_v^GNN || p_v^MLP)

over every observed node v (the teacher labels the unlabelled ones). The KL is the shared
`distill.losses.divergence` at temperature T (T^2-scaled, as in Hinton et al. 2015).
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import Tensor
from typing_extensions import Annotated

from distill.families.graph.base import GraphMethod, masked_cross_entropy
from distill.losses import divergence as shared_divergence
from distill.registry import register_method


@register_method("glnn", family="graph", description="GLNN: MLP on the GNN's soft labels over all nodes + labels (Zhang 2022)",
                 injected=("student", "teacher"))
class GLNN(GraphMethod):
    def __init__(self, student, teacher, lam: Annotated[float, Field(ge=0, le=1)] = 0.0,
                 temperature: Annotated[float, Field(gt=0)] = 1.0,
                 divergence: Literal["forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd"] = "forward_kl"):
        super().__init__(student, teacher)
        self.lam, self.temperature, self.divergence = lam, temperature, divergence
        self.weights = {"ce": lam, "kd": 1.0 - lam}

    def hparams(self):
        return {"lam": self.lam, "temperature": self.temperature}

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        idx = batch["idx"]
        z = self.student_logits(idx)
        assert self.teacher_logits is not None
        kd = shared_divergence(z, self.teacher_logits[idx], self.divergence, temperature=self.temperature)
        return {"ce": masked_cross_entropy(z, self.labels(idx)), "kd": kd * self.temperature**2}
