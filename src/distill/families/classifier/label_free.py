"""Label-free distillation (Cui et al. 2021, SSLD: "Beyond Self-Supervision: A Simple Yet Effective
Network Distillation Alternative to Improve Backbones").

The student learns from the teacher's soft targets only, on every image, labeled or not: no
ground-truth term at all, so unlabeled data is as useful as labeled data. The divergence is the
shared one (SSLD uses the Jensen-Shannon divergence; forward KL is also allowed).
Only the teacher's logits are used, so it works with the output cache.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from typing_extensions import Annotated

from distill.methods.base import ClassifierMethod
from distill.registry import register_method


@register_method("label_free", family="classifier", description="SSLD: teacher soft targets only, labels unused, trains on unlabeled data (Cui 2021)",
                 injected=("student", "teacher"))
class LabelFree(ClassifierMethod):
    supports_cache = True

    def __init__(self, student, teacher, temperature: Annotated[float, Field(gt=0)] = 1.0,
                 divergence: Literal["jsd", "forward_kl", "reverse_kl", "tvd"] = "jsd"):
        super().__init__(student, teacher)
        self.temperature, self.divergence = temperature, divergence
        self.weights = {"kd": 1.0}

    def hparams(self):
        return {"temperature": self.temperature, "divergence": self.divergence}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self.student_logits(batch["x"])
        return {"kd": self.kd_loss(logits, self.teacher_outputs(batch), self.temperature, self.divergence)}
