"""Token-level KD on the data (off-policy): a divergence between the teacher's and the student's
next-token distributions at every target position, plus a weighted next-token CE.

loss = kd_weight * T^2 * D(p_teacher^T, q_student^T) + ce_weight * CE   (Hinton et al. 2015; with
D = forward KL this is word-level KD, Kim & Rush 2016; JSD(beta): the divergence of GKD, Agarwal et
al. 2024, here off-policy; skew KL: DistiLLM, Ko et al. 2024; TVD: Wen et al. 2023).
`reverse_kl` is token-level reverse KL on the data. It is not MiniLLM (Gu et al. 2024), which
minimises the sequence-level reverse KL on the student's own samples by policy gradient.
Logits are computed chunk by chunk from hidden states (`distill.losses.lm`). With
`teacher.cache_top_k` set (or a served teacher, `teacher.url`), the teacher's targets are its
stored top-k plus an exact tail bucket (`sparse_divergence`); `top_k` (the union of both models'
top-k) cannot be formed from them and is refused there: the cache's k is the knob.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from typing_extensions import Annotated

from distill.errors import ConfigError
from distill.families.llm.base import LMMethod
from distill.families.llm.data import IGNORE
from distill.families.llm.models import output_head
from distill.registry import register_method

DivergenceName = Literal["forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd"]


@register_method("token_kd", family="llm", description="token-level KD on the data: any divergence + CE (Hinton 2015, Kim & Rush 2016)",
                 injected=("student", "teacher"))
class TokenKD(LMMethod):
    reads_teacher_cache = True  # the runner attaches an `LMTeacherCache` when teacher.cache_top_k is set

    def __init__(self, student, teacher, divergence: DivergenceName = "forward_kl",
                 temperature: Annotated[float, Field(gt=0)] = 1.0, beta: Annotated[float, Field(ge=0, le=1)] = 0.5,
                 alpha: Annotated[float, Field(ge=0, lt=1)] = 0.1, top_k: Annotated[int, Field(ge=1)] | None = None,
                 kd_weight: Annotated[float, Field(ge=0)] = 1.0, ce_weight: Annotated[float, Field(ge=0)] = 0.0,
                 chunk_size: Annotated[int, Field(ge=1)] = 1024):
        super().__init__(student, teacher, chunk_size=chunk_size)
        self.divergence, self.temperature, self.beta, self.alpha, self.top_k = divergence, temperature, beta, alpha, top_k
        self.weights = {"kd": kd_weight, "ce": ce_weight}
        self._cache = None

    def accept_teacher_targets(self, source: str) -> None:
        """Called before a cache is built or a served teacher attached: refuse what they cannot honour."""
        if self.top_k is not None:
            raise ConfigError(f"token_kd: top_k={self.top_k} takes the union of the teacher's and the student's "
                              f"top-k, which {source} cannot give (it holds the teacher's top-k only); remove "
                              "top_k and set the number of teacher tokens with teacher.cache_top_k "
                              "(teacher.served_top_k for a served teacher), or drop the cache / url.")

    @property
    def cache(self):
        """Teacher targets read instead of the teacher (`LMTeacherCache` or `ServedTargets`), or None."""
        return self._cache

    @cache.setter
    def cache(self, value) -> None:
        if value is not None:
            self.accept_teacher_targets(f"a {type(value).__name__}")
        self._cache = value

    def hparams(self):
        return {"divergence": self.divergence, "temperature": self.temperature, "top_k": self.top_k}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        h_s = self.student_hidden(batch)
        mask = batch["labels"] != IGNORE
        if self.cache is not None:
            from distill.families.llm.cache import cached_divergence_sum

            ws, bs, fs = output_head(self.student)
            kd = cached_divergence_sum(h_s, ws, bs, self.cache.lookup(batch), mask, self.divergence,
                                       vocab_size=self.cache.meta["vocab_size"], temperature=self.temperature,
                                       beta=self.beta, alpha=self.alpha, chunk_size=self.chunk_size, logit_map=fs)
        else:
            kd = self.kd_sum(h_s, self.teacher_hidden(batch), mask, self.divergence, temperature=self.temperature,
                             beta=self.beta, alpha=self.alpha, top_k=self.top_k)
        kd = kd * self.temperature**2
        terms = {"kd": kd / batch["norm"]}
        if self.weights["ce"] > 0:
            terms["ce"] = self.ce_sum(h_s, batch["labels"]) / batch["norm"]
        return terms
