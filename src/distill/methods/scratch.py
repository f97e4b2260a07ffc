"""Baseline: the student trained with cross-entropy on its labels only (no teacher)."""
from __future__ import annotations

import torch

from distill.methods.base import ClassifierMethod, masked_cross_entropy
from distill.registry import register_method


@register_method("scratch", family="classifier", description="cross-entropy on labels only (the no-teacher baseline)",
                 injected=("student", "teacher"))
class Scratch(ClassifierMethod):
    needs_teacher = False

    def __init__(self, student, teacher=None, label_smoothing: float = 0.0):
        super().__init__(student, None)
        self.label_smoothing = label_smoothing

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self.student_logits(batch["x"])
        if self.label_smoothing and batch["y"].dim() == 2:  # soft targets (MixUp / CutMix), smoothed
            c = logits.shape[-1]
            return {"ce": masked_cross_entropy(logits, batch["y"] * (1 - self.label_smoothing) + self.label_smoothing / c)}
        if self.label_smoothing:
            y = batch["y"]
            lab = y >= 0
            ce = torch.nn.functional.cross_entropy(logits[lab].float(), y[lab], label_smoothing=self.label_smoothing) \
                if lab.any() else logits.sum() * 0
            return {"ce": ce}
        return {"ce": masked_cross_entropy(logits, batch["y"])}
