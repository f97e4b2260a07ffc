"""Baseline without a teacher: unsupervised contrastive training of the same student on the same
text (SimCSE, Gao et al. 2021, eq. 4): two views of each sentence (dropout noise, plus dropped
tokens so that a static student also gets two views) are positives, the batch's others negatives.
"""
from __future__ import annotations

import torch
from pydantic import Field
from typing_extensions import Annotated

from distill.families.encoder.base import EncoderMethod
from distill.losses.features import info_nce
from distill.registry import register_method


@register_method("scratch", family="encoder", description="no teacher: unsupervised SimCSE on the same text",
                 injected=("student", "teacher"))
class Scratch(EncoderMethod):
    needs_teacher = False

    def __init__(self, student, teacher=None, temperature: Annotated[float, Field(gt=0)] = 0.05,
                 token_drop: Annotated[float, Field(ge=0, lt=1)] = 0.1):
        super().__init__(student, None)
        self.temperature, self.token_drop = temperature, token_drop
        self.weights = {"contrastive": 1.0}

    def _view(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, mask = self.student_inputs(batch)
        if self.token_drop > 0:
            keep = torch.rand(mask.shape, device=mask.device) >= self.token_drop
            keep[:, 0] = True  # never an empty sentence
            mask = mask * keep.long()
        return self.student(ids, mask)["embedding"]  # (B, D)

    def forward(self, batch):
        return {"contrastive": info_nce(self._view(batch), self._view(batch), temperature=self.temperature)}
