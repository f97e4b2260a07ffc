"""FIRST: distillation from the teacher's top-k only, calibrated (Shum et al. 2024, "FIRST: Teach a
Reliable Large Language Model Through Efficient Trustworthy Distillation").

Per target position the teacher is reduced to its top-k tokens, renormalised over them at a
calibration temperature tau (the "trustworthy maximisation": the renormalised top-k is
over-confident, tau > 1 softens it):

    p~_i = softmax(z_t[topk] / tau)_i          for i in the teacher's top-k, 0 elsewhere
    loss = sum_i p~_i (log p~_i - log q_i)     q = softmax(z_s) over the full vocabulary

i.e. KL(p~ || q), which is 0 only when the student puts exactly p~ on the top-k and nothing
elsewhere. The runner reports each student's ECE (`eval.ece_bins`) next to its bits per byte.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor
from typing_extensions import Annotated

from distill.families.llm.base import LMMethod
from distill.families.llm.data import IGNORE
from distill.families.llm.models import output_head
from distill.losses.lm import chunked_rows_sum, head_logits
from distill.registry import register_method


def first_loss(student_logits: Tensor, teacher_logits: Tensor, k: int, tau: float) -> Tensor:
    """Per-position KL(calibrated teacher top-k || student). logits: (N, V) (V may differ: padded
    rows are dropped). Returns (N,)."""
    v = min(student_logits.shape[-1], teacher_logits.shape[-1])
    zs, zt = student_logits[:, :v].float(), teacher_logits[:, :v].float()
    top = zt.topk(min(k, v), dim=-1)                              # (N, k)
    lp_t = F.log_softmax(top.values / tau, dim=-1)                # calibrated, renormalised on the top-k
    lp_s = F.log_softmax(zs, dim=-1).gather(-1, top.indices)      # student log-probs at those tokens
    return (lp_t.exp() * (lp_t - lp_s)).sum(-1)


@register_method("first", family="llm", description="FIRST: calibrated top-k teacher knowledge (Shum et al. 2024)",
                 injected=("student", "teacher"))
class FIRST(LMMethod):
    def __init__(self, student, teacher, top_k: Annotated[int, Field(ge=1)] = 5,
                 calibration_temperature: Annotated[float, Field(gt=0)] = 1.0,
                 kd_weight: Annotated[float, Field(ge=0)] = 1.0, ce_weight: Annotated[float, Field(ge=0)] = 0.0,
                 chunk_size: Annotated[int, Field(ge=1)] = 1024):
        super().__init__(student, teacher, chunk_size=chunk_size)
        self.top_k, self.tau = top_k, calibration_temperature
        self.weights = {"kd": kd_weight, "ce": ce_weight}

    def hparams(self):
        return {"top_k": self.top_k, "calibration_temperature": self.tau}

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        h_s = self.student_hidden(batch)
        mask = batch["labels"] != IGNORE
        hs, ht = h_s[mask], self.teacher_hidden(batch)[mask]  # (n, D), (n, Dt)
        ws, bs, fs = output_head(self.student)
        wt, bt, ft = output_head(self.teacher.module)
        wt, bt = wt.detach(), (bt.detach() if bt is not None else None)

        def row_loss(z: Tensor, i: int, j: int) -> Tensor:
            with torch.no_grad():
                zt = head_logits(ht[i:j], wt, bt, ft)
            return first_loss(z, zt, self.top_k, self.tau)
        kd = chunked_rows_sum(hs, ws, bs, row_loss, logit_map=fs, chunk_size=self.chunk_size)
        terms = {"kd": kd / batch["norm"]}
        if self.weights["ce"] > 0:
            terms["ce"] = self.ce_sum(h_s, batch["labels"]) / batch["norm"]
        return terms
