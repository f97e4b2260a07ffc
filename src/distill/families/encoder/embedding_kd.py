"""Sentence-embedding distillation: match each sentence's embedding to the teacher's (MSE, as in
Reimers & Gurevych 2020, or 1 - cosine), plus the in-batch cosine-similarity matrix (the geometry
a retrieval index sees). Works for any student, the static embedding bag included.

A static student built from the teacher's vocabulary (`student.init: vocab`) is narrower than the
teacher (its table was reduced with PCA); its embedding is matched with the teacher's projected on
that PCA basis, as tokenlearn does. The similarity term compares cosines, so widths may differ.

The encoder family's text has no random augmentation, so a sentence's teacher embedding is the
same in every epoch: with `cache_teacher` (default) it is computed once, the first time the
sentence is seen, and kept (in CPU memory, 4 bytes x teacher width per sentence); later epochs run
the student alone.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field
from typing_extensions import Annotated

from distill.errors import ConfigError
from distill.families.encoder.base import EncoderMethod
from distill.families.encoder.losses import embedding_match, similarity_matrix_loss
from distill.registry import register_method


@register_method("embedding_kd", family="encoder", description="sentence embeddings: MSE/cosine + in-batch similarity matrix",
                 injected=("student", "teacher"))
class EmbeddingKD(EncoderMethod):
    def __init__(self, student, teacher, loss: Literal["mse", "cosine"] = "cosine",
                 match_weight: Annotated[float, Field(ge=0)] = 1.0,
                 similarity_weight: Annotated[float, Field(ge=0)] = 1.0,
                 cache_teacher: bool = True):
        super().__init__(student, teacher)
        self.loss = loss
        self.weights = {"match": match_weight, "similarity": similarity_weight}
        self.cache_teacher = cache_teacher

    def forward(self, batch):
        e_t = self.teacher_embedding(batch)
        e_s = self.run_student(batch)[0]["embedding"]
        sim = similarity_matrix_loss(e_s, e_t)
        target = e_t
        if e_s.shape[-1] != e_t.shape[-1]:
            basis = getattr(getattr(self.student, "encoder", self.student), "teacher_basis", None)
            if basis is None and self.weights["match"] == 0:
                return {"similarity": sim}
            if basis is None:
                raise ConfigError(f"embedding_kd: the student's embedding has width {e_s.shape[-1]}, the teacher's "
                                  f"{e_t.shape[-1]}; set student.match_teacher_dim: true (a linear head to the "
                                  "teacher's width), or use loss weights match_weight: 0.")
            target = e_t.float() @ basis.to(e_t.device)
        return {"match": embedding_match(e_s, target, self.loss), "similarity": sim}
