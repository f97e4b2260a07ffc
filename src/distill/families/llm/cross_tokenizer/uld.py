"""ULD: universal logit distillation (Boizard et al. 2024, arXiv:2402.12030).

At every aligned chunk start (the position predicting the first token of a chunk on each side:
both models have read the same text), the teacher's and the student's next-token probabilities
are sorted in decreasing order, the shorter vector is zero-padded to the longer vocabulary, and
the closed-form Wasserstein-1 distance between them is the sum of absolute differences (the
paper's eq. 4). Plus next-token CE on the student's own tokens (the paper trains with both).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from typing_extensions import Annotated

from distill.families.llm.cross_tokenizer.base import CrossTokenizerMethod
from distill.registry import register_method


def sorted_wasserstein(p_student: torch.Tensor, p_teacher: torch.Tensor) -> torch.Tensor:
    """sum_i |sort(p_S)_i - sort(p_T)_i| with both sorted decreasingly and zero-padded to the larger
    size. p_*: (N, V_*) probabilities (V_S != V_T allowed) -> (N,)."""
    v = max(p_student.shape[-1], p_teacher.shape[-1])
    s = F.pad(p_student.sort(-1, descending=True).values, (0, v - p_student.shape[-1]))
    t = F.pad(p_teacher.sort(-1, descending=True).values, (0, v - p_teacher.shape[-1]))
    return (s - t).abs().sum(-1)


@register_method("uld", family="llm", description="cross-tokenizer: Wasserstein-1 of sorted probabilities + CE (Boizard 2024)",
                 injected=("student", "teacher"))
class ULD(CrossTokenizerMethod):
    def __init__(self, student, teacher, temperature: Annotated[float, Field(gt=0)] = 1.0,
                 uld_weight: Annotated[float, Field(ge=0)] = 1.0, ce_weight: Annotated[float, Field(ge=0)] = 1.0,
                 chunk_size: Annotated[int, Field(ge=1)] = 1024):
        super().__init__(student, teacher, chunk_size=chunk_size)
        self.temperature = temperature
        self.weights = {"uld": uld_weight, "ce": ce_weight}

    def hparams(self):
        return {"temperature": self.temperature}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        p = self.pair(batch)
        h_s = self.student_hidden(batch)
        h_t = self.teacher_hidden(p.teacher_batch)
        T = self.temperature
        # (chunk, Vs) / (chunk, Vt) probabilities at a time, at each valid chunk's first position
        w1 = self.first_rows(lambda zs, zt: sorted_wasserstein(F.softmax(zs / T, -1), F.softmax(zt / T, -1)),
                             h_s, h_t, p)
        terms = {"uld": w1 / batch["norm"]}
        if self.weights["ce"] > 0:
            terms["ce"] = self.ce_sum(h_s, batch["labels"]) / batch["norm"]
        return terms
