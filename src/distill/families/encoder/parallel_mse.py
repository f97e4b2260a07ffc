"""Multilingual distillation on parallel sentences (Reimers & Gurevych 2020, "Making Monolingual
Sentence Embeddings Multilingual using Knowledge Distillation", eq. 1): the student maps a source
sentence and its translation(s) onto the teacher's embedding of the source,

    L = MSE(student(s), teacher(s)) + MSE(student(t), teacher(s)),

logged as the terms `source` and `translation` (with several translation columns, the mean over
them). sentence-transformers' MSELoss averages its columns instead of adding them, so its value is
half this sum. A student with its own tokenizer (an XLM-R student under an English teacher, as in
the paper) reads the sources and translations in its own ids and the teacher the sources in its
ids. The teacher sees only the source sentences; with `cache_teacher` (default) each one's
embedding is computed once and kept, as in `embedding_kd`.
"""
from __future__ import annotations

from typing import Any

import torch

from distill.errors import ConfigError
from distill.families.encoder.base import EncoderMethod
from distill.families.encoder.examples import Examples, tokenize_texts
from distill.families.encoder.losses import embedding_match
from distill.registry import register_method


@register_method("parallel_mse", family="encoder",
                 description="parallel sentences: MSE of source and translation embeddings to the teacher's "
                             "source embedding (Reimers 2020)",
                 injected=("student", "teacher", "tokenizer", "student_tokenizer", "max_length"))
class ParallelMSE(EncoderMethod):
    data_kind = "parallel"

    def __init__(self, student, teacher, tokenizer=None, max_length: int = 64, cache_teacher: bool = True,
                 student_tokenizer=None):
        super().__init__(student, teacher)
        self.tokenizer, self.max_length = tokenizer, max_length
        self.student_tokenizer = student_tokenizer  # None: the student reads the teacher's ids
        self.cache_teacher = cache_teacher
        self.weights = {"source": 1.0, "translation": 1.0}

    def check_examples(self, ex: Examples) -> None:
        """Nothing beyond the columns `read_examples` already required."""

    def collate(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Sources (B, T) as input_ids/attention_mask; translations (B * M, T), M per source, in row order
        (in the student's ids; its sources too as student_input_ids where its tokenizer differs)."""
        sources = [e["source"] for e in examples]
        batch = tokenize_texts(self.tokenizer, sources, self.max_length)
        batch.update(self.own_tokens(sources, self.max_length))
        tr = tokenize_texts(self.student_tokenizer or self.tokenizer, [t for e in examples for t in e["translations"]],
                            self.max_length)  # only the student reads them
        batch.update(translation_ids=tr["input_ids"], translation_mask=tr["attention_mask"])
        return batch

    def forward(self, batch):
        e_t = self.teacher_embedding(batch)                                                     # (B, Dt)
        e_s = self.student(*self.student_inputs(batch))["embedding"]                            # (B, D)
        e_tr = self.student(batch["translation_ids"], batch["translation_mask"])["embedding"]   # (B * M, D)
        if e_s.shape[-1] != e_t.shape[-1]:
            raise ConfigError(f"parallel_mse: the student's embedding has width {e_s.shape[-1]}, the teacher's "
                              f"{e_t.shape[-1]}; set student.match_teacher_dim: true.")
        m = e_tr.shape[0] // e_s.shape[0]
        return {"source": embedding_match(e_s, e_t, "mse"),
                "translation": embedding_match(e_tr, e_t.repeat_interleave(m, 0), "mse")}
