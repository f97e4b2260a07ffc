"""Sentence-embedding distillation: match each sentence's embedding to the teacher's (MSE, as in
Reimers & Gurevych 2020, or 1 - cosine), plus the in-batch cosine-similarity matrix (the geometry
a retrieval index sees). Works for any student, the static embedding bag included."""
from __future__ import annotations

from typing import Literal

from pydantic import Field
from typing_extensions import Annotated

from distill.families.encoder.base import EncoderMethod
from distill.families.encoder.losses import embedding_match, similarity_matrix_loss
from distill.registry import register_method


@register_method("embedding_kd", family="encoder", description="sentence embeddings: MSE/cosine + in-batch similarity matrix",
                 injected=("student", "teacher"))
class EmbeddingKD(EncoderMethod):
    def __init__(self, student, teacher, loss: Literal["mse", "cosine"] = "cosine",
                 match_weight: Annotated[float, Field(ge=0)] = 1.0,
                 similarity_weight: Annotated[float, Field(ge=0)] = 1.0):
        super().__init__(student, teacher)
        self.loss = loss
        self.weights = {"match": match_weight, "similarity": similarity_weight}

    def forward(self, batch):
        e_t = self.run_teacher(batch)[0]["embedding"]
        e_s = self.run_student(batch)[0]["embedding"]
        return {"match": embedding_match(e_s, e_t, self.loss), "similarity": similarity_matrix_loss(e_s, e_t)}
