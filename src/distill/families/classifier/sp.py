"""Similarity-preserving KD (Tung & Mori 2019, "Similarity-Preserving Knowledge Distillation").

Samples that the teacher represents alike should be represented alike by the student:
loss = CE + gamma * ||G_s - G_t||_F^2 / B^2 with G = row-normalised F F^T over the batch.
Feature sizes may differ (CNN teacher, MLP student). Needs the live teacher (features).
"""
from __future__ import annotations

import torch
from pydantic import Field
from typing_extensions import Annotated

from distill.families.classifier.common import PENULTIMATE, FeatureMethod
from distill.losses.features import sp_loss
from distill.registry import register_method


@register_method("sp", family="classifier", description="Similarity preserving: match batch similarity matrices (Tung 2019)",
                 injected=("student", "teacher"))
class SP(FeatureMethod):
    def __init__(self, student, teacher, student_layers: list[str] = [PENULTIMATE],  # noqa: B006
                 teacher_layers: list[str] = [PENULTIMATE],  # noqa: B006
                 gamma: Annotated[float, Field(ge=0)] = 1000.0, kd_weight: Annotated[float, Field(ge=0)] = 0.0):
        super().__init__(student, teacher, student_layers, teacher_layers)
        self.kd_weight = kd_weight
        self.weights = {"ce": 1.0, "sp": gamma, "kd": kd_weight}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits, t_logits, f_s, f_t = self.features(batch)
        terms = self.base_terms(logits, t_logits, batch["y"], self.kd_weight)
        terms["sp"] = sum(sp_loss(s, t) for s, t in zip(f_s, f_t))
        return terms
