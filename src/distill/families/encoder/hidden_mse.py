"""Hidden-state distillation: MSE between student hidden states, through a learned linear map
W (D_s -> D_t) per mapped layer, and the teacher's (TinyBERT, Jiao et al. 2020, eq. 8), over real
tokens; the embedding outputs can be matched too (TinyBERT eq. 9). Layer mapping: uniform, last_k
or explicit pairs."""
from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn
from typing_extensions import Annotated

from distill.families.encoder.base import EncoderMethod
from distill.families.encoder.losses import masked_mse
from distill.registry import register_method


@register_method("hidden_mse", family="encoder", description="hidden states through learned projections, layer map (TinyBERT)",
                 injected=("student", "teacher"))
class HiddenMSE(EncoderMethod):
    needs_layers = True

    def __init__(self, student, teacher, layer_map: Literal["uniform", "last_k", "explicit"] = "uniform",
                 pairs: list[tuple[int, int]] | None = None, last_k: Annotated[int, Field(ge=1)] = 1,
                 include_embeddings: bool = True, hidden_weight: Annotated[float, Field(ge=0)] = 1.0,
                 embedding_weight: Annotated[float, Field(ge=0)] = 1.0):
        super().__init__(student, teacher)
        # hidden_states index k = output of layer k - 1; index 0 = the embedding layer
        self.pairs = [(s + 1, t + 1) for s, t in self.layer_pairs(layer_map, pairs, last_k)]
        if include_embeddings:
            self.pairs.insert(0, (0, 0))
        d_s, d_t = student.config.hidden_size, teacher.module.config.hidden_size
        self.proj = nn.ModuleList(nn.Linear(d_s, d_t) if d_s != d_t else nn.Identity() for _ in self.pairs)
        self.weights = {"hidden": hidden_weight, "embed": embedding_weight}

    def hparams(self):
        return {"pairs": self.pairs}

    def forward(self, batch):
        t_out = self.run_teacher(batch, hidden=True)[0]
        s_out = self.run_student(batch, hidden=True)[0]
        mask = batch["attention_mask"]
        hs, ht = s_out["hidden_states"], t_out["hidden_states"]
        loss = sum(masked_mse(p(hs[i]), ht[j], mask) for p, (i, j) in zip(self.proj, self.pairs)) / len(self.pairs)
        return {"hidden": loss, "embed": self.embed_term(s_out["embedding"], t_out["embedding"])}
