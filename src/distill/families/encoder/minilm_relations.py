"""Self-attention relation distillation (MiniLMv2, Wang et al. 2021, eq. 1-3): for queries, keys
and values of one student layer and one teacher layer, each split into the same number of relation
heads R, the scaled dot-product relations softmax(X_r X_r^T / sqrt(d_r)) of the student match the
teacher's by KL per row. Widths and head counts of the two models may differ; only R must divide
both. `relations: [attention, vv]` gives MiniLM v1 (Wang et al. 2020): attention + value relation."""
from __future__ import annotations

from typing import Literal

from pydantic import Field
from typing_extensions import Annotated

from distill.errors import ConfigError
from distill.families.encoder.base import EncoderMethod
from distill.families.encoder.losses import attention_logprobs, head_mean_logprobs, relation_kl, row_kl
from distill.registry import register_method

_KIND = {"qq": "query", "kk": "key", "vv": "value"}


@register_method("minilm_relations", family="encoder", description="Q-Q, K-K, V-V self-attention relations of one layer (MiniLMv2)",
                 injected=("student", "teacher"))
class MiniLMRelations(EncoderMethod):
    needs_layers = True
    needs_attention = True  # taps each layer's query/key(/value) projections

    def __init__(self, student, teacher, relations: list[Literal["qq", "kk", "vv", "attention"]] | None = None,
                 student_layer: int = -1, teacher_layer: int = -1,
                 relation_heads: Annotated[int, Field(ge=1)] | None = None,
                 relation_weight: Annotated[float, Field(ge=0)] = 1.0,
                 embedding_weight: Annotated[float, Field(ge=0)] = 1.0):
        super().__init__(student, teacher)
        t = teacher.module
        self.s_layer = student_layer % student.num_layers
        self.t_layer = teacher_layer % t.num_layers
        self.relations = list(relations or ("qq", "kk", "vv"))
        self.heads = relation_heads or t.num_heads
        for d, who in ((student.config.hidden_size, "student"), (t.config.hidden_size, "teacher")):
            if d % self.heads:
                raise ConfigError(f"relation_heads: {self.heads} does not divide the {who} width {d}.")
        self.weights = {"relations": relation_weight, "embed": embedding_weight}

    def _names(self, model, layer):
        return [model.layer_module(layer, k) for k in ("query", "key", "value")]

    def relation_loss(self, s_taps, t_taps, mask):
        s, t = self.student, self._teacher.module  # type: ignore[union-attr]
        total = 0.0
        for r in self.relations:
            if r == "attention":
                lp_s = head_mean_logprobs(attention_logprobs(s_taps[s.layer_module(self.s_layer, "query")],
                                                             s_taps[s.layer_module(self.s_layer, "key")], s.num_heads, mask))
                lp_t = head_mean_logprobs(attention_logprobs(t_taps[t.layer_module(self.t_layer, "query")],
                                                             t_taps[t.layer_module(self.t_layer, "key")], t.num_heads, mask))
                total = total + row_kl(lp_s, lp_t, mask)
            else:
                k = _KIND[r]
                total = total + relation_kl(s_taps[s.layer_module(self.s_layer, k)],
                                            t_taps[t.layer_module(self.t_layer, k)], self.heads, mask)
        return total / len(self.relations)

    def forward(self, batch):
        t_out, t_taps = self.run_teacher(batch, self._names(self._teacher.module, self.t_layer))
        s_out, s_taps = self.run_student(batch, self._names(self.student, self.s_layer))
        return {"relations": self.relation_loss(s_taps, t_taps, batch["attention_mask"]),
                "embed": self.embed_term(s_out["embedding"], t_out["embedding"])}
