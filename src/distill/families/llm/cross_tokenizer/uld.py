"""ULD: universal logit distillation (Boizard et al. 2024, arXiv:2402.12030).

At every aligned chunk start (the position predicting the first token of a chunk on each side:
both models have read the same text), the teacher's and the student's next-token probabilities
are sorted in decreasing order, the shorter vector is zero-padded to the longer vocabulary, and
the closed-form Wasserstein-1 distance between them is the sum of absolute differences (the
paper's eq. 4). Plus next-token CE on the student's own tokens (the paper trains with both).

With `teacher.cache_top_k` (the aligned top-k cache, `cross_tokenizer.cache.AlignedTopKCache`) or
`teacher.url` (a served teacher's top-k, `teacher.served_top_k` of them) the teacher does not run
here and is known at each chunk start only by its k largest probabilities and the mass of the
rest; the loss is then `topk_sorted_wasserstein`, the tightest value those determine from below.
This is a deviation from the paper, which sorts the teacher's whole distribution: exact when k
covers the teacher's vocabulary, otherwise at most 2 x min(student tail, teacher tail) below it
per position (tested), where "tail" is the mass past rank k.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from typing_extensions import Annotated

from distill.families.llm.cross_tokenizer.base import CrossTokenizerMethod
from distill.losses.lm import student_rows
from distill.registry import register_method


def topk_sorted_wasserstein(p_student: torch.Tensor, t_top: torch.Tensor, t_tail: torch.Tensor) -> torch.Tensor:
    """`sorted_wasserstein` with the teacher known only by its k largest probabilities `t_top` (N, k)
    and the mass of the rest `t_tail` (N,): sum_{i <= k} |s_i - t_i| + |sum_{i > k} s_i - t_tail|,
    with s the student's probabilities (N, V_S) sorted decreasingly (zero-padded to k). By the
    triangle inequality over the unknown tail this is at most the exact value and at least the exact
    value minus 2 min(sum_{i > k} s_i, t_tail); equal when t_tail is 0 (k covers the vocabulary)."""
    s = p_student.sort(-1, descending=True).values
    t = t_top.sort(-1, descending=True).values
    k = t.shape[-1]
    if s.shape[-1] < k:
        s = F.pad(s, (0, k - s.shape[-1]))
    return (s[:, :k] - t).abs().sum(-1) + (s[:, k:].sum(-1) - t_tail).abs()


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
    reads_aligned_cache = True  # the runner attaches an `AlignedTopKCache` or a served teacher (`first_topk`)
    aligned_cache_kind = "topk"

    def __init__(self, student, teacher, temperature: Annotated[float, Field(gt=0)] = 1.0,
                 uld_weight: Annotated[float, Field(ge=0)] = 1.0, ce_weight: Annotated[float, Field(ge=0)] = 1.0,
                 chunk_size: Annotated[int, Field(ge=1)] = 1024):
        super().__init__(student, teacher, chunk_size=chunk_size)
        self.temperature = temperature
        self.weights = {"uld": uld_weight, "ce": ce_weight}
        self.cache = None

    def hparams(self):
        return {"temperature": self.temperature}

    @staticmethod
    def reads_aligned(params: dict) -> bool:
        """ULD can always read the teacher's top-k from the aligned top-k cache or a served teacher."""
        return True

    def accept_aligned_cache(self) -> None:
        return None

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        p = self.pair(batch)
        h_s = self.student_hidden(batch)
        T = self.temperature
        if self.cache is not None:  # the teacher's top-k and log tail at each valid chunk's first position
            keep = p.valid.nonzero().flatten()
            top, tail = self.cache.first_topk(p, keep, temperature=T)
            hs = h_s.reshape(-1, h_s.shape[-1])[p.s_first[keep]]
            w1 = student_rows(lambda zs, lt, r: topk_sorted_wasserstein(F.softmax(zs / T, -1), lt.exp(), r.exp()),
                              hs, self.student_head(), top, tail, student_vocab=self.s_vocab,
                              chunk_size=self.chunk_size).sum()
        else:
            h_t = self.teacher_hidden(p.teacher_batch)
            # (chunk, Vs) / (chunk, Vt) probabilities at a time, at each valid chunk's first position
            w1 = self.first_rows(lambda zs, zt: sorted_wasserstein(F.softmax(zs / T, -1), F.softmax(zt / T, -1)),
                                 h_s, h_t, p)
        terms = {"uld": w1 / batch["norm"]}
        if self.weights["ce"] > 0:
            terms["ce"] = self.ce_sum(h_s, batch["labels"]) / batch["norm"]
        return terms
