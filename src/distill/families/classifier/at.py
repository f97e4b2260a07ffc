"""Attention transfer (Zagoruyko & Komodakis 2017, "Paying More Attention to Attention").

The student matches the teacher's spatial attention maps (channel mean of |f|^2, L2-normalised)
at pairs of layers: loss = CE + beta * sum_l || Q_s^l - Q_t^l ||^2 (+ optional KD). Channel
counts may differ; maps of different sizes are resized. Needs the live teacher (features).
"""
from __future__ import annotations

import torch
from pydantic import Field
from typing_extensions import Annotated

from distill.families.classifier.common import PENULTIMATE, FeatureMethod
from distill.losses.features import at_loss
from distill.registry import register_method


@register_method("at", family="classifier", description="Attention transfer: match spatial attention maps at named layers (Zagoruyko 2017)",
                 injected=("student", "teacher"))
class AT(FeatureMethod):
    def __init__(self, student, teacher, student_layers: list[str] = [PENULTIMATE],  # noqa: B006
                 teacher_layers: list[str] = [PENULTIMATE], p: Annotated[float, Field(gt=0)] = 2.0,  # noqa: B006
                 beta: Annotated[float, Field(ge=0)] = 5.0, kd_weight: Annotated[float, Field(ge=0)] = 0.0):
        super().__init__(student, teacher, student_layers, teacher_layers)
        self.p, self.kd_weight = p, kd_weight
        self.weights = {"ce": 1.0, "at": beta, "kd": kd_weight}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits, t_logits, f_s, f_t = self.features(batch)
        terms = self.base_terms(logits, t_logits, batch["y"], self.kd_weight)
        terms["at"] = sum(at_loss(s, t, self.p) for s, t in zip(f_s, f_t))
        return terms
