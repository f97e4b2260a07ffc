"""ALM: approximate likelihood matching (Minixhofer, Vulic & Ponti 2025, arXiv:2503.20083).

Both models score the same aligned chunks (`alignment`): log p(chunk) is the sum of the log-probs
of the chunk's tokens on each side. With tau the temperature, a = exp(log p_T / tau) and
b = exp(log p_S / tau) are the probabilities of binary events, compared by the binary KL
    KL(Bern(a) || Bern(b)) = a log(a / b) + (1 - a) log((1 - a) / (1 - b)),
which is the binary cross-entropy of the paper minus the teacher's constant binary entropy (same
gradients; zero when the student matches). Optional terms: `hidden` (MSE between the teacher's
final hidden states at shared chunk ends and a learnt projection of the student's) and `ce`.

With `teacher.cache_top_k` set, the teacher's chunk log-likelihoods come from the aligned teacher
cache (`cross_tokenizer.cache`: the teacher's log-prob of each of its own tokens, written once
before training) instead of its forward; the `hidden` term needs the teacher's hidden states and is
refused with the cache.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from typing_extensions import Annotated

from distill.errors import ConfigError
from distill.families.llm.cross_tokenizer.base import CrossTokenizerMethod
from distill.registry import register_method

_MAX_LOGP = -1e-6  # keeps log(1 - a) finite when a chunk is (nearly) certain


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stably."""
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def binary_kl_from_logprobs(lp_teacher: torch.Tensor, lp_student: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Per-chunk KL(Bern(p_T^(1/tau)) || Bern(p_S^(1/tau))) from chunk log-likelihoods (C,) -> (C,)."""
    a = (lp_teacher.clamp(max=_MAX_LOGP) / tau)
    b = (lp_student.clamp(max=_MAX_LOGP) / tau)
    pa = a.exp()
    return pa * (a - b) + (1 - pa) * (_log1mexp(a) - _log1mexp(b))


@register_method("alm", family="llm", description="cross-tokenizer: approximate likelihood matching of aligned chunks (Minixhofer 2025)",
                 injected=("student", "teacher"))
class ALM(CrossTokenizerMethod):
    reads_aligned_cache = True  # the runner attaches an `AlignedTeacherCache` when teacher.cache_top_k is set

    def __init__(self, student, teacher, tau: Annotated[float, Field(gt=0)] = 100.0,
                 alm_weight: Annotated[float, Field(ge=0)] = 1.0, ce_weight: Annotated[float, Field(ge=0)] = 0.0,
                 hidden_weight: Annotated[float, Field(ge=0)] = 0.0, chunk_size: Annotated[int, Field(ge=1)] = 1024):
        super().__init__(student, teacher, chunk_size=chunk_size)
        self.tau = tau
        self.weights = {"alm": alm_weight, "ce": ce_weight, "hidden": hidden_weight}
        self.proj = None
        self.cache = None
        if hidden_weight > 0:  # the student owns its projector into the teacher's hidden space
            self.proj = nn.Linear(student.config.hidden_size, teacher.module.config.hidden_size, bias=False)

    def hparams(self):
        return {"tau": self.tau}

    @staticmethod
    def reads_aligned(params: dict) -> bool:
        """Whether alm with these params can take the teacher's token log-probs from the aligned
        cache or a served teacher: not with its hidden-state term, which needs the teacher's forward."""
        return float((params or {}).get("hidden_weight", 0.0)) == 0.0

    def accept_aligned_cache(self) -> None:
        if not self.reads_aligned({"hidden_weight": self.weights["hidden"]}):
            raise ConfigError("methods: alm with hidden_weight > 0 compares the teacher's hidden states, which the "
                              "aligned teacher cache does not hold; set hidden_weight: 0, or remove "
                              "teacher.cache_top_k to run the teacher while training.")

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        p = self.pair(batch)
        h_s = self.student_hidden(batch)
        c_s = self.chunk_logprobs(h_s, self.student_head(), self.s_vocab, p.s_pos, p.s_tok, p.s_chunk, p.n_chunks)
        h_t = None
        if self.cache is not None:
            c_t = self.cache.chunk_logprobs(p, p.n_chunks)
        else:
            h_t = self.teacher_hidden(p.teacher_batch)
            with torch.no_grad():
                c_t = self.chunk_logprobs(h_t, self.teacher_head(), self.t_vocab, p.t_pos, p.t_tok, p.t_chunk,
                                          p.n_chunks)
        kl = binary_kl_from_logprobs(c_t, c_s, self.tau)
        terms = {"alm": (kl * p.valid).sum() * self.tau / batch["norm"]}  # x tau: gradients of order 1 in log p
        if self.weights["ce"] > 0:
            terms["ce"] = self.ce_sum(h_s, batch["labels"]) / batch["norm"]
        if self.proj is not None and h_t is not None:
            # the last token of each valid chunk ends at a shared boundary: compare states after it
            last_s = p.s_pos.new_full((p.n_chunks,), -1, dtype=torch.long).scatter_reduce(0, p.s_chunk, p.s_pos + 1, "amax")
            last_t = p.t_pos.new_full((p.n_chunks,), -1, dtype=torch.long).scatter_reduce(0, p.t_chunk, p.t_pos + 1, "amax")
            keep = p.valid & (last_s >= 0) & (last_t >= 0)
            hs = self.proj(h_s.reshape(-1, h_s.shape[-1])[last_s[keep]])
            ht = h_t.reshape(-1, h_t.shape[-1])[last_t[keep]].float()
            terms["hidden"] = F.mse_loss(hs.float(), ht, reduction="none").mean(-1).sum() / batch["norm"]
        return terms
