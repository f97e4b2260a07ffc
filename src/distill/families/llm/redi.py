"""REDI: reinforcement distillation from positive and negative teacher traces (Xu et al. 2025,
"Harnessing Negative Signals: Reinforcement Distillation from Teacher Data for LLM Reasoning", eq. 5).

Traces are the teacher's (e.g. sampled and checked for correctness offline): JSONL with a label
field (`data.label_field`). Per sequence the length-normalised log-likelihood is raised for a
positive trace and lowered, down-weighted by `alpha` < 1, for a negative one:
    loss = mean over sequences of  [-logp(y+)/|y+|]  or  [alpha * logp(y-)/|y-|]
No teacher model is needed at training time.
"""
from __future__ import annotations

import torch
from pydantic import Field
from typing_extensions import Annotated

from distill.families.llm.base import LMMethod
from distill.families.llm.data import IGNORE
from distill.families.llm.models import output_head
from distill.losses.lm import hidden_cross_entropy
from distill.registry import register_method


@register_method("redi", family="llm", description="REDI: likelihood up on positive, down (weighted) on negative traces (Xu 2025)",
                 injected=("student", "teacher"))
class REDI(LMMethod):
    needs_teacher = False

    def __init__(self, student, teacher=None, alpha: Annotated[float, Field(ge=0, le=1)] = 0.8,
                 chunk_size: Annotated[int, Field(ge=1)] = 1024):
        super().__init__(student, None, chunk_size=chunk_size)
        self.alpha = alpha
        self.weights = {"pos": 1.0, "neg": 1.0}

    def hparams(self):
        return {"alpha": self.alpha}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        w, b, f = output_head(self.student)
        ce = hidden_cross_entropy(self.student_hidden(batch), w, batch["labels"], bias=b, logit_map=f,
                                  chunk_size=self.chunk_size, reduction="none")  # (B, T), 0 where not counted
        counted = batch["labels"] != IGNORE
        # one id per (row, example in row); sequences are length-normalised separately
        seq = (torch.arange(ce.shape[0], device=ce.device)[:, None] * (int(batch["seg"].max()) + 1) + batch["seg"])[counted]
        n_seq = int(seq.max()) + 1 if seq.numel() else 1
        nll = torch.zeros(n_seq, device=ce.device).index_add(0, seq, ce[counted])
        length = torch.zeros(n_seq, device=ce.device).index_add(0, seq, torch.ones_like(ce[counted]))
        sign = torch.zeros(n_seq, device=ce.device).index_add(0, seq, batch["sign"][counted]) / length.clamp(min=1)
        present = length > 0
        mean_nll = nll[present] / length[present]
        sign = sign[present]
        n = present.sum().clamp(min=1)
        pos = (mean_nll * (sign > 0)).sum() / n
        neg = (-self.alpha * mean_nll * (sign < 0)).sum() / n
        return {"pos": pos, "neg": neg}
