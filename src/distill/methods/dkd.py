"""Decoupled KD (Zhao et al. 2022, "Decoupled Knowledge Distillation", eq. 7).

KD = TCKD + (1 - p_t^gt) NCKD; DKD reweights: loss = CE + alpha * TCKD + beta * NCKD, where
TCKD = KL over the binary (target, non-target) split and NCKD = KL among non-target classes,
both at temperature T and scaled by T^2; the KD terms ramp up linearly over `warmup_epochs`.
Unlabeled samples use the teacher's top class as the target. Reads only the teacher's logits, so
a full-k output cache serves it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from typing_extensions import Annotated

from distill.methods.base import ClassifierMethod, dense_teacher_logits, masked_cross_entropy
from distill.losses import divergence
from distill.losses.divergences import divergence_from_logprobs
from distill.registry import register_method


def binary_logprobs(logits: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """log [p(target), p(not target)] at temperature T. (B, C), (B,) -> (B, 2)."""
    lp = F.log_softmax(logits.float() / temperature, -1)
    gt = lp.gather(-1, target[:, None])
    rest = lp.scatter(-1, target[:, None], float("-inf")).logsumexp(-1, keepdim=True)
    return torch.cat([gt, rest], -1)


def dkd_terms(s_logits: torch.Tensor, t_logits: torch.Tensor, target: torch.Tensor, temperature: float
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD), each a batch mean scaled by T^2."""
    tckd = divergence_from_logprobs(binary_logprobs(s_logits, target, temperature),
                                    binary_logprobs(t_logits, target, temperature)).mean()
    gt_mask = F.one_hot(target, s_logits.shape[-1]).bool()
    # the target class is pushed out of both softmaxes; the rest renormalise among themselves
    nckd = divergence(s_logits.float().masked_fill(gt_mask, -1e4), t_logits.float().masked_fill(gt_mask, -1e4),
                      temperature=temperature)
    return tckd * temperature**2, nckd * temperature**2


@register_method("dkd", family="classifier", description="Decoupled KD: target / non-target KL terms weighted apart (Zhao 2022)",
                 injected=("student", "teacher"))
class DKD(ClassifierMethod):
    hard_labels = True  # labels index classes beyond the CE: no MixUp/CutMix
    supports_cache = True  # reads only the teacher's logits (a full-k cache gives them up to a shift)

    def __init__(self, student, teacher, temperature: Annotated[float, Field(gt=0)] = 4.0,
                 alpha: Annotated[float, Field(ge=0)] = 1.0, beta: Annotated[float, Field(ge=0)] = 8.0,
                 warmup_epochs: Annotated[int, Field(ge=0)] = 20):
        super().__init__(student, teacher)
        self.temperature, self.alpha, self.beta, self.warmup_epochs = temperature, alpha, beta, warmup_epochs
        self.weights = {"ce": 1.0, "tckd": alpha, "nckd": beta}

    def hparams(self):
        return {"temperature": self.temperature, "alpha": self.alpha, "beta": self.beta}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self.student_logits(batch["x"])
        t = self.cache.temperature if self.cache is not None else 1.0
        t_logits = dense_teacher_logits(self.teacher_outputs(batch), logits.shape[-1], t)
        y = batch["y"]
        target = torch.where(y >= 0, y, t_logits.argmax(-1))
        tckd, nckd = dkd_terms(logits, t_logits, target, self.temperature)
        ramp = min(1.0, (self.epoch + 1) / self.warmup_epochs) if self.warmup_epochs else 1.0
        return {"ce": masked_cross_entropy(logits, y), "tckd": ramp * tckd, "nckd": ramp * nckd}
