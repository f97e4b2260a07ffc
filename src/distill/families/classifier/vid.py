"""Variational information distillation (Ahn, Hu, Damianou, Lawrence, Dai 2019, "Variational
Information Distillation for Knowledge Transfer").

Maximises a variational lower bound on the mutual information between teacher and student
features: the teacher feature is modelled as Gaussian with mean mu(f_s) (a small regressor) and a
learned per-channel variance sigma_c^2 = softplus(a_c) + eps; the loss is its negative
log-likelihood: loss = CE + w * sum_l mean[ log sigma + (f_t - mu(f_s))^2 / (2 sigma^2) ].
The regressors and variances are owned here and trained with the student. Needs the live teacher.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from typing_extensions import Annotated

from distill.families.classifier.common import PENULTIMATE, FeatureMethod, regressor
from distill.losses.features import gaussian_nll, match_spatial
from distill.registry import register_method


def softplus_inverse(y: float) -> float:
    return y + math.log(-math.expm1(-y))


@register_method("vid", family="classifier", description="VID: Gaussian variational bound on teacher-student mutual information (Ahn 2019)",
                 injected=("student", "teacher"))
class VID(FeatureMethod):
    def __init__(self, student, teacher, student_layers: list[str] = [PENULTIMATE],  # noqa: B006
                 teacher_layers: list[str] = [PENULTIMATE],  # noqa: B006
                 init_variance: Annotated[float, Field(gt=0)] = 5.0, eps: Annotated[float, Field(gt=0)] = 1e-5,
                 weight: Annotated[float, Field(ge=0)] = 1.0, kd_weight: Annotated[float, Field(ge=0)] = 0.0):
        super().__init__(student, teacher, student_layers, teacher_layers)
        self.init_variance, self.eps, self.kd_weight = init_variance, eps, kd_weight
        self.regressors = nn.ModuleList()
        self.raw_variance = nn.ParameterList()
        self.weights = {"ce": 1.0, "vid": weight, "kd": kd_weight}

    def build(self, f_s, f_t):
        for s, t in zip(f_s, f_t):
            self.regressors.append(regressor(s.shape, t.shape))
            self.raw_variance.append(nn.Parameter(torch.full((t.shape[1],), softplus_inverse(self.init_variance - self.eps))))

    def log_scale(self, i: int, dims: int) -> torch.Tensor:
        """log sigma per channel, shaped to broadcast over (B, C, ...)."""
        var = F.softplus(self.raw_variance[i]) + self.eps
        return (0.5 * var.log()).view(1, -1, *([1] * (dims - 2)))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits, t_logits, f_s, f_t = self.features(batch)
        terms = self.base_terms(logits, t_logits, batch["y"], self.kd_weight)
        nll = []
        for i, (s, t) in enumerate(zip(f_s, f_t)):
            mu = match_spatial(self.regressors[i](s), t)
            nll.append(gaussian_nll(mu, t, self.log_scale(i, t.dim())))
        terms["vid"] = sum(nll)
        return terms
