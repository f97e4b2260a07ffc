"""Neuron selectivity transfer (Huang & Wang 2017, "Like What You Like: Knowledge Distill via
Neuron Selectivity Transfer").

Each channel's spatial activation pattern is a sample of the layer's "selectivity" distribution;
the student matches the teacher's by the squared MMD with a polynomial kernel (x . y)^2:
loss = CE + w * sum_l MMD^2 (+ optional KD). Channel counts may differ. Needs the live teacher.
"""
from __future__ import annotations

import torch
from pydantic import Field
from typing_extensions import Annotated

from distill.families.classifier.common import PENULTIMATE, FeatureMethod
from distill.losses.features import nst_loss
from distill.registry import register_method


@register_method("nst", family="classifier", description="Neuron selectivity transfer: MMD between channel activation patterns (Huang 2017)",
                 injected=("student", "teacher"))
class NST(FeatureMethod):
    def __init__(self, student, teacher, student_layers: list[str] = [PENULTIMATE],  # noqa: B006
                 teacher_layers: list[str] = [PENULTIMATE],  # noqa: B006
                 weight: Annotated[float, Field(ge=0)] = 10.0, kd_weight: Annotated[float, Field(ge=0)] = 0.0):
        super().__init__(student, teacher, student_layers, teacher_layers)
        self.kd_weight = kd_weight
        self.weights = {"ce": 1.0, "nst": weight, "kd": kd_weight}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits, t_logits, f_s, f_t = self.features(batch)
        terms = self.base_terms(logits, t_logits, batch["y"], self.kd_weight)
        terms["nst"] = sum(nst_loss(s, t) for s, t in zip(f_s, f_t))
        return terms
