"""Relational KD (Park, Kim, Lu, Cho 2019, "Relational Knowledge Distillation").

The student preserves the teacher's distance-wise (pairs, normalised by the mean distance) and
angle-wise (triplets) structure of a batch of embeddings, with Huber losses averaged as in the
authors' code (over the full B x B distance matrix and all B^3 triplets), and their weights 25 and 50:
loss = CE + w_d * RKD-D + w_a * RKD-A. Embedding sizes may differ. Needs the live teacher.
"""
from __future__ import annotations

import torch
from pydantic import Field
from typing_extensions import Annotated

from distill.families.classifier.common import PENULTIMATE, FeatureMethod, flat_features
from distill.losses.relations import rkd_angle_loss, rkd_distance_loss
from distill.registry import register_method


@register_method("rkd", family="classifier", description="Relational KD: distance and angle structure of embeddings (Park 2019)",
                 injected=("student", "teacher"))
class RKD(FeatureMethod):
    def __init__(self, student, teacher, student_layer: str = PENULTIMATE, teacher_layer: str = PENULTIMATE,
                 distance_weight: Annotated[float, Field(ge=0)] = 25.0, angle_weight: Annotated[float, Field(ge=0)] = 50.0,
                 kd_weight: Annotated[float, Field(ge=0)] = 0.0):
        super().__init__(student, teacher, [student_layer], [teacher_layer])
        self.kd_weight = kd_weight
        self.weights = {"ce": 1.0, "rkd_distance": distance_weight, "rkd_angle": angle_weight, "kd": kd_weight}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits, t_logits, (f_s,), (f_t,) = self.features(batch)
        f_s, f_t = flat_features(f_s), flat_features(f_t)
        terms = self.base_terms(logits, t_logits, batch["y"], self.kd_weight)
        terms["rkd_distance"] = rkd_distance_loss(f_s, f_t)
        terms["rkd_angle"] = rkd_angle_loss(f_s, f_t)
        return terms
