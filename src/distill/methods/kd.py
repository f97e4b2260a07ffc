"""Knowledge distillation (Hinton, Vinyals, Dean 2015, "Distilling the Knowledge in a Neural Network").

loss = alpha * T^2 * KL(p_t^T || p_s^T) + (1 - alpha) * CE(y, p_s)
The KL is the shared divergence of `distill.losses` (the same function the LLM family uses).
Samples without a label (y = -1) get the KD term only: label-free KD on unlabeled data (SSLD).
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from typing_extensions import Annotated

from distill.methods.base import ClassifierMethod, masked_cross_entropy
from distill.registry import register_method


@register_method("kd", family="classifier", description="Hinton KD: temperature-softened KL to the teacher + CE (Hinton 2015)",
                 injected=("student", "teacher"))
class KD(ClassifierMethod):
    supports_cache = True

    def __init__(self, student, teacher, temperature: Annotated[float, Field(gt=0)] = 4.0,
                 alpha: Annotated[float, Field(ge=0, le=1)] = 0.9,
                 divergence: Literal["forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd"] = "forward_kl"):
        super().__init__(student, teacher)
        self.temperature, self.alpha, self.divergence = temperature, alpha, divergence
        self.weights = {"kd": alpha, "ce": 1.0 - alpha}

    def hparams(self):
        return {"temperature": self.temperature, "alpha": self.alpha, "divergence": self.divergence}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self.student_logits(batch["x"])
        t_out = self.teacher_outputs(batch)
        return {"kd": self.kd_loss(logits, t_out, self.temperature, self.divergence),
                "ce": masked_cross_entropy(logits, batch["y"])}
