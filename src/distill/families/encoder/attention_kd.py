"""Attention distillation: the student's self-attention distributions match the teacher's on mapped
layers (TinyBERT, Jiao et al. 2020, eq. 7; here as KL per query row, as MiniLM eq. 5, or MSE of the
probabilities). Attention is recomputed from the tapped query/key projections, so any attention
implementation works. Different head counts compare head-averaged distributions."""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from typing_extensions import Annotated

from distill.families.encoder.base import EncoderMethod
from distill.families.encoder.losses import attention_logprobs, head_mean_logprobs, row_kl
from distill.registry import register_method


@register_method("attention_kd", family="encoder", description="self-attention distributions on mapped layers (TinyBERT)",
                 injected=("student", "teacher"))
class AttentionKD(EncoderMethod):
    needs_layers = True
    needs_attention = True  # taps each layer's query/key(/value) projections

    def __init__(self, student, teacher, layer_map: Literal["uniform", "last_k", "explicit"] = "uniform",
                 pairs: list[tuple[int, int]] | None = None, last_k: Annotated[int, Field(ge=1)] = 1,
                 loss: Literal["kl", "mse"] = "kl", attention_weight: Annotated[float, Field(ge=0)] = 1.0,
                 embedding_weight: Annotated[float, Field(ge=0)] = 1.0):
        super().__init__(student, teacher)
        self.pairs = self.layer_pairs(layer_map, pairs, last_k)
        self.loss = loss
        self.weights = {"attention": attention_weight, "embed": embedding_weight}

    def _names(self, model, layers):
        return [model.layer_module(i, k) for i in layers for k in ("query", "key")]

    def attention_loss(self, s_taps, t_taps, mask) -> torch.Tensor:
        s_model, t_model = self.student, self._teacher.module  # type: ignore[union-attr]
        total = 0.0
        for i, j in self.pairs:
            lp_s = attention_logprobs(s_taps[s_model.layer_module(i, "query")], s_taps[s_model.layer_module(i, "key")],
                                      s_model.num_heads, mask)
            lp_t = attention_logprobs(t_taps[t_model.layer_module(j, "query")], t_taps[t_model.layer_module(j, "key")],
                                      t_model.num_heads, mask)
            if lp_s.shape[1] != lp_t.shape[1]:
                lp_s, lp_t = head_mean_logprobs(lp_s), head_mean_logprobs(lp_t)
            if self.loss == "kl":
                total = total + row_kl(lp_s, lp_t, mask)
            else:
                m = mask.bool()[:, None, :, None].float()
                total = total + ((lp_s.exp() - lp_t.exp()).pow(2) * m).sum() / (m.sum() * lp_s.shape[1]).clamp(min=1)
        return total / len(self.pairs)

    def forward(self, batch):
        t_out, t_taps = self.run_teacher(batch, self._names(self._teacher.module, [j for _, j in self.pairs]))
        s_out, s_taps = self.run_student(batch, self._names(self.student, [i for i, _ in self.pairs]))
        return {"attention": self.attention_loss(s_taps, t_taps, batch["attention_mask"]),
                "embed": self.embed_term(s_out["embedding"], t_out["embedding"])}
