"""Ensemble distillation (Shen & Savvides 2020, "MEAL V2: Boosting Vanilla ResNet-50 to 80%+ Top-1
Accuracy on ImageNet without Tricks").

Several frozen teachers (the run's teacher unless `include_run_teacher: false`, plus saved models
listed in `checkpoints`) are averaged
in probability space; the student matches the mean softmax with the shared KL (MEAL V2 uses it
without one-hot labels: ce_weight 0). An optional output discriminator, owned by the method,
tells teacher from student probability vectors; a gradient-reversal layer lets the same single
loss train the discriminator to tell them apart and the student to fool it, so no runner hook
or second optimiser is needed.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from typing_extensions import Annotated

from distill.methods.base import ClassifierMethod, masked_cross_entropy
from distill.registry import register_method
from distill.teacher import Ensemble, Teacher


class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return -g


def reverse_grad(x: torch.Tensor) -> torch.Tensor:
    """Identity in the forward pass; negates the gradient in the backward pass."""
    return _ReverseGrad.apply(x)


@register_method("ensemble", family="classifier", description="MEAL V2: mean softmax of several teachers + optional output discriminator (Shen 2020)",
                 injected=("student", "teacher"))
class EnsembleKD(ClassifierMethod):
    def __init__(self, student, teacher, checkpoints: list[str] = [], include_run_teacher: bool = True,  # noqa: B006
                 temperature: Annotated[float, Field(gt=0)] = 1.0, ce_weight: Annotated[float, Field(ge=0)] = 0.0,
                 discriminator_weight: Annotated[float, Field(ge=0)] = 0.1,
                 discriminator_hidden: Annotated[int, Field(ge=1)] = 64):
        super().__init__(student, teacher)
        from distill.models.io import load_model

        members = ([teacher.module] if include_run_teacher else []) + [load_model(Path(p)) for p in checkpoints]
        if not members:
            from distill.errors import ConfigError

            raise ConfigError("ensemble: no teachers (include_run_teacher is false and checkpoints is empty).")
        self.num_teachers = len(members)
        self.ensemble = Teacher(Ensemble(members), name="ensemble")  # frozen, not a submodule
        self.temperature = temperature
        self.discriminator: nn.Module | None = None
        self.discriminator_hidden = discriminator_hidden
        self.weights = {"kd": 1.0, "ce": ce_weight, "adv": discriminator_weight}

    def hparams(self):
        return {"teachers": self.num_teachers, "temperature": self.temperature}

    def setup(self, batch):
        self.ensemble.to(batch["x"].device)
        if self.weights["adv"] > 0:
            c = self.student_logits(batch["x"]).shape[-1]
            self.discriminator = nn.Sequential(nn.Linear(c, self.discriminator_hidden), nn.ReLU(),
                                               nn.Linear(self.discriminator_hidden, 1)).to(batch["x"].device)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self.student_logits(batch["x"])
        t_logp = self.ensemble(batch["x"])  # (B, C) log of the mean teacher probability
        terms = {"kd": self.kd_loss(logits, t_logp, self.temperature), "ce": masked_cross_entropy(logits, batch["y"])}
        if self.discriminator is not None:
            p_s = F.softmax(logits.float(), -1)
            d_t = self.discriminator(t_logp.exp())
            d_s = self.discriminator(reverse_grad(p_s))
            terms["adv"] = (F.binary_cross_entropy_with_logits(d_t, torch.ones_like(d_t))
                            + F.binary_cross_entropy_with_logits(d_s, torch.zeros_like(d_s)))
        return terms
