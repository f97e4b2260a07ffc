"""On-policy distillation, GKD (Agarwal et al. 2024, "On-Policy Distillation of Language Models:
Learning from Self-Generated Mistakes", Algorithm 1).

With probability `lmbda` a batch's continuations are sampled from the current student (at
`temperature`, up to `max_new_tokens`) and scored by the teacher; otherwise the data's own
continuations are used. The loss is a token-level divergence (default generalised JSD(beta))
on the continuation tokens. Student-sampled batches are normalised by their own token count.
"""
from __future__ import annotations

import time

import torch
from pydantic import Field
from typing_extensions import Annotated

from distill.families.llm.base import LMMethod, continuation_batch, prompts_of, sample
from distill.families.llm.data import IGNORE
from distill.families.llm.token_kd import DivergenceName
from distill.registry import register_method


@register_method("on_policy", family="llm", description="GKD: divergence on student-sampled continuations with prob. lambda (Agarwal 2024)",
                 injected=("student", "teacher"))
class OnPolicy(LMMethod):
    uses_prompts = True

    def __init__(self, student, teacher, lmbda: Annotated[float, Field(ge=0, le=1)] = 0.5,
                 divergence: DivergenceName = "jsd", beta: Annotated[float, Field(ge=0, le=1)] = 0.5,
                 alpha: Annotated[float, Field(ge=0, lt=1)] = 0.1, temperature: Annotated[float, Field(ge=0)] = 1.0,
                 max_new_tokens: Annotated[int, Field(ge=1)] = 64, top_k: Annotated[int, Field(ge=1)] | None = None,
                 chunk_size: Annotated[int, Field(ge=1)] = 1024):
        super().__init__(student, teacher, chunk_size=chunk_size)
        self.lmbda, self.divergence, self.beta, self.alpha = lmbda, divergence, beta, alpha
        self.temperature, self.max_new_tokens, self.top_k = temperature, max_new_tokens, top_k
        self.weights = {"kd": 1.0}
        self.generated = (0, 0.0)  # tokens the student sampled and the seconds it took (this process, this run)

    def hparams(self):
        return {"lmbda": self.lmbda, "divergence": self.divergence, "beta": self.beta}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if torch.rand(()).item() < self.lmbda:  # torch RNG: restored exactly on resume
            prompts = prompts_of(batch)
            t0 = time.perf_counter()
            conts = sample(self.student, batch["prompt_ids"], batch["prompt_mask"], max_new_tokens=self.max_new_tokens,
                           temperature=self.temperature, eos_id=self.eos_id, pad_id=self.pad_id,
                           vocab_limit=self.shared_vocab())
            n, secs = self.generated
            self.generated = (n + sum(len(c) for c in conts), secs + time.perf_counter() - t0)
            batch = continuation_batch(prompts, conts, self.pad_id, batch["input_ids"].device)
        h_s, h_t = self.student_hidden(batch), self.teacher_hidden(batch)
        mask = batch["labels"] != IGNORE
        kd = self.kd_sum(h_s, h_t, mask, self.divergence, beta=self.beta, alpha=self.alpha, top_k=self.top_k)
        return {"kd": kd / batch["norm"]}
