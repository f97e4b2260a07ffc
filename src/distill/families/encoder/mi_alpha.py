"""MI-alpha intermediate distillation (Distiller, He et al. 2021): maximise a lower bound of the
mutual information between mapped student and teacher hidden states, the interpolated bound
I_alpha of Poole et al. 2019 (eq. 12; alpha trades the bias of InfoNCE against the variance of
NWJ/TUBA). The critic is separable: f(x, y) = cos(g(x), h(y)) / tau with learned linear g, h;
samples are real tokens of the batch (at most `max_tokens`, drawn at random) or mean-pooled
sentences. Positive pairs: the same token/sentence; negatives: the others of the batch."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from typing_extensions import Annotated

from distill.families.encoder.base import EncoderMethod
from distill.families.encoder.losses import mean_pool, mi_alpha_bound
from distill.registry import register_method


@register_method("mi_alpha", family="encoder", description="MI-alpha bound between mapped hidden states (Distiller)",
                 injected=("student", "teacher"))
class MIAlpha(EncoderMethod):
    needs_layers = True

    def __init__(self, student, teacher, alpha: Annotated[float, Field(ge=0, le=1)] = 0.5,
                 layer_map: Literal["uniform", "last_k", "explicit"] = "uniform",
                 pairs: list[tuple[int, int]] | None = None, last_k: Annotated[int, Field(ge=1)] = 1,
                 level: Literal["token", "sentence"] = "token", max_tokens: Annotated[int, Field(ge=2)] = 256,
                 critic_dim: Annotated[int, Field(ge=1)] = 128, temperature: Annotated[float, Field(gt=0)] = 0.1,
                 mi_weight: Annotated[float, Field(ge=0)] = 1.0, embedding_weight: Annotated[float, Field(ge=0)] = 1.0):
        super().__init__(student, teacher)
        self.pairs = [(s + 1, t + 1) for s, t in self.layer_pairs(layer_map, pairs, last_k)]
        self.alpha, self.level, self.max_tokens, self.temperature = alpha, level, max_tokens, temperature
        d_s, d_t = student.config.hidden_size, teacher.module.config.hidden_size
        self.g = nn.ModuleList(nn.Linear(d_s, critic_dim) for _ in self.pairs)
        self.h = nn.ModuleList(nn.Linear(d_t, critic_dim) for _ in self.pairs)
        self.log_baseline = nn.Parameter(torch.zeros(()))  # a(y) = exp(b), learned (TUBA's baseline)
        self.weights = {"mi": mi_weight, "embed": embedding_weight}

    def _samples(self, h: torch.Tensor, mask: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
        if self.level == "sentence":
            return mean_pool(h, mask)          # (B, D)
        return h[mask.bool()][idx]             # (N, D) real tokens

    def forward(self, batch):
        t_out = self.run_teacher(batch, hidden=True)[0]
        s_out = self.run_student(batch, hidden=True)[0]
        mask = batch["attention_mask"]
        idx = None
        if self.level == "token":
            n = int(mask.sum())
            idx = torch.randperm(n, device=mask.device)[: self.max_tokens]
        bound = 0.0
        for g, h, (i, j) in zip(self.g, self.h, self.pairs):
            x = F.normalize(g(self._samples(s_out["hidden_states"][i], mask, idx)), dim=-1)
            y = F.normalize(h(self._samples(t_out["hidden_states"][j].detach(), mask, idx)), dim=-1)
            bound = bound + mi_alpha_bound(x @ y.t() / self.temperature, self.alpha, self.log_baseline)
        return {"mi": -bound / len(self.pairs), "embed": self.embed_term(s_out["embedding"], t_out["embedding"])}
