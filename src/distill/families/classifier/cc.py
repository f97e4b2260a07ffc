"""Correlation congruence (Peng et al. 2019, "Correlation Congruence for Knowledge Distillation").

Beyond matching each instance, the student matches the teacher's correlation between instances:
a Gaussian-RBF kernel matrix over the batch (order-P Taylor expansion on normalised embeddings),
loss = CE + w * ||C_s - C_t||_F^2 / B^2 (+ optional KD). Embedding sizes may differ (each side's
kernel is computed within its own space). Needs the live teacher.
"""
from __future__ import annotations

import torch
from pydantic import Field
from typing_extensions import Annotated

from distill.families.classifier.common import PENULTIMATE, FeatureMethod, flat_features
from distill.losses.relations import cc_loss
from distill.registry import register_method


@register_method("cc", family="classifier", description="Correlation congruence: match instance-correlation kernels (Peng 2019)",
                 injected=("student", "teacher"))
class CC(FeatureMethod):
    def __init__(self, student, teacher, student_layer: str = PENULTIMATE, teacher_layer: str = PENULTIMATE,
                 gamma: Annotated[float, Field(gt=0)] = 0.4, order: Annotated[int, Field(ge=1, le=8)] = 2,
                 weight: Annotated[float, Field(ge=0)] = 100.0, kd_weight: Annotated[float, Field(ge=0)] = 0.0):
        super().__init__(student, teacher, [student_layer], [teacher_layer])
        self.gamma, self.order, self.kd_weight = gamma, order, kd_weight
        self.weights = {"ce": 1.0, "cc": weight, "kd": kd_weight}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits, t_logits, (f_s,), (f_t,) = self.features(batch)
        terms = self.base_terms(logits, t_logits, batch["y"], self.kd_weight)
        terms["cc"] = cc_loss(flat_features(f_s), flat_features(f_t), self.gamma, self.order)
        return terms
