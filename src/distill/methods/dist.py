"""DIST (Huang, You, Wang, Qian, Xu 2022, "Knowledge Distillation from A Stronger Teacher").

Matches relations instead of exact probabilities: 1 - Pearson correlation between student and
teacher predictions, per sample across classes (inter-class) and per class across the batch
(intra-class). loss = CE + beta * inter + gamma * intra, at temperature T (scaled by T^2).
Only the teacher's logits are used, so it works with a full-k output cache.
"""
from __future__ import annotations

import torch
from pydantic import Field
from typing_extensions import Annotated

from distill.methods.base import ClassifierMethod, dense_teacher_logits, masked_cross_entropy
from distill.losses.relations import dist_terms
from distill.registry import register_method


@register_method("dist", family="classifier", description="DIST: Pearson-correlation relations of predictions, inter- and intra-class (Huang 2022)",
                 injected=("student", "teacher"))
class DIST(ClassifierMethod):
    supports_cache = True

    def __init__(self, student, teacher, temperature: Annotated[float, Field(gt=0)] = 4.0,
                 beta: Annotated[float, Field(ge=0)] = 2.0, gamma: Annotated[float, Field(ge=0)] = 2.0):
        super().__init__(student, teacher)
        self.temperature, self.beta, self.gamma = temperature, beta, gamma
        self.weights = {"ce": 1.0, "inter": beta, "intra": gamma}

    def hparams(self):
        return {"temperature": self.temperature, "beta": self.beta, "gamma": self.gamma}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self.student_logits(batch["x"])
        t = self.cache.temperature if self.cache is not None else 1.0
        t_logits = dense_teacher_logits(self.teacher_outputs(batch), logits.shape[-1], t)
        inter, intra = dist_terms(logits, t_logits, self.temperature)
        return {"ce": masked_cross_entropy(logits, batch["y"]), "inter": inter, "intra": intra}
