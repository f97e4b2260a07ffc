"""Logit-standardised KD (Sun, Ren, Li, Wang, Cao 2024, "Logit Standardization in Knowledge Distillation").

KD whose softmax inputs are z-scored per sample: p = softmax((z - mean z) / (std z * T)). The
student need not match the teacher's logit range, only its logit shape; the loss is invariant to
shifting and scaling either side's logits. loss = kd_weight * T^2 KL(p_t || p_s) + ce_weight * CE.
Defaults are the authors' (`--logit-stand --base-temp 2 --kd-weight 9` with CE weight 0.1 in their
release, whose `kd_loss` this matches: z-score over classes with the sample std + 1e-7).
Only the teacher's logits are used (a full-k output cache works: z-scores ignore its shift).
"""
from __future__ import annotations

import torch
from pydantic import Field
from typing_extensions import Annotated

from distill.methods.base import ClassifierMethod, dense_teacher_logits, masked_cross_entropy
from distill.losses import divergence
from distill.losses.relations import standardize_logits
from distill.registry import register_method


def ls_kd_loss(s_logits: torch.Tensor, t_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL between softmaxes of z-scored logits at T. (B, C), (B, C) -> scalar."""
    return divergence(standardize_logits(s_logits), standardize_logits(t_logits), temperature=temperature) * temperature**2


@register_method("ls_kd", family="classifier", description="KD on z-score standardised logits (Sun 2024)",
                 injected=("student", "teacher"))
class LSKD(ClassifierMethod):
    supports_cache = True

    def __init__(self, student, teacher, temperature: Annotated[float, Field(gt=0)] = 2.0,
                 kd_weight: Annotated[float, Field(ge=0)] = 9.0, ce_weight: Annotated[float, Field(ge=0)] = 0.1):
        super().__init__(student, teacher)
        self.temperature = temperature
        self.weights = {"kd": kd_weight, "ce": ce_weight}

    def hparams(self):
        return {"temperature": self.temperature}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self.student_logits(batch["x"])
        t = self.cache.temperature if self.cache is not None else 1.0
        t_logits = dense_teacher_logits(self.teacher_outputs(batch), logits.shape[-1], t)
        return {"kd": ls_kd_loss(logits, t_logits, self.temperature), "ce": masked_cross_entropy(logits, batch["y"])}
