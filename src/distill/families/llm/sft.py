"""Baseline: the student trained with next-token cross-entropy on the data only (no teacher)."""
from __future__ import annotations

import torch

from distill.families.llm.base import LMMethod
from distill.registry import register_method


@register_method("sft", family="llm", description="next-token cross-entropy on the data only (the no-teacher baseline)",
                 injected=("student", "teacher"))
class SFT(LMMethod):
    needs_teacher = False

    def __init__(self, student, teacher=None, chunk_size: int = 1024):
        super().__init__(student, None, chunk_size=chunk_size)
        self.weights = {"ce": 1.0}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        h = self.student_hidden(batch)
        return {"ce": self.ce_sum(h, batch["labels"]) / batch["norm"]}
