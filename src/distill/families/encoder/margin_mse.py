"""Margin-MSE (Hofstätter et al. 2020, "Improving Efficient Neural Ranking Models with
Cross-Architecture Knowledge Distillation", eq. 1): a bi-encoder student learns the teacher's score
margins on (query, positive, negative_1..k) examples,

    L = mean_i ( (s(q, p) - s(q, n_i)) - (t(q, p) - t(q, n_i)) )^2,   s = dot product of student embeddings,

one margin per negative, as sentence-transformers' MarginMSELoss (whose default similarity is the
dot product too). Only margins are matched, so the student's scores may sit on another scale than
the teacher's.

Where the teacher's margins come from (`scores`):
- `data`: the rows' label column (`label`/`margin`/`score`, as in the MS MARCO hard-negative files):
  k margins or k + 1 scores per row; no teacher runs;
- `cross_encoder`: `teacher.cross_encoder` scores every (query, passage) pair (its logits);
- `bi_encoder`: the recipe's teacher encoder, dot products of its embeddings (cached per text);
- `auto` (default): data if the rows have a label column, else the cross-encoder if the recipe names
  one, else the bi-encoder teacher.
"""
from __future__ import annotations

from typing import Any, Literal

import torch

from distill.errors import ConfigError
from distill.families.encoder.base import EncoderMethod
from distill.families.encoder.examples import Examples, target_margins, tokenize_texts
from distill.families.encoder.losses import margin_mse, margins, pair_dot_scores
from distill.registry import register_method


def margin_source(mode: str, ex: Examples, cross_teacher, name: str) -> str:
    """The resolved source of teacher targets for `mode` (auto, data, cross_encoder, bi_encoder)."""
    if mode == "auto":
        mode = "data" if ex.has_labels else ("cross_encoder" if cross_teacher is not None else "bi_encoder")
    if mode == "data" and not ex.has_labels:
        raise ConfigError(f"{name}: scores=data, but {', '.join(ex.files)} has no label column (looked for label, "
                          "margin, score, scores); name it with data.columns: {label: COLUMN}.")
    if mode == "cross_encoder" and cross_teacher is None:
        raise ConfigError(f"{name}: scores=cross_encoder needs teacher.cross_encoder (a CrossEncoder folder).")
    return mode


@register_method("margin_mse", family="encoder",
                 description="bi-encoder on (query, positive, negatives): MSE of dot-product margins to the "
                             "teacher's (Hofstätter 2020)",
                 injected=("student", "teacher", "cross_teacher", "tokenizer", "student_tokenizer", "max_length"))
class MarginMSE(EncoderMethod):
    data_kind = "ranking"

    def __init__(self, student, teacher, cross_teacher=None, tokenizer=None, max_length: int = 64,
                 scores: Literal["auto", "data", "cross_encoder", "bi_encoder"] = "auto", cache_teacher: bool = True,
                 student_tokenizer=None):
        super().__init__(student, teacher)
        self.cross_teacher, self.tokenizer, self.max_length = cross_teacher, tokenizer, max_length
        self.student_tokenizer = student_tokenizer  # None: the student reads the teacher's ids
        self.scores, self.mode = scores, scores
        self.cache_teacher = cache_teacher
        self.weights = {"margin": 1.0}

    def hparams(self) -> dict[str, Any]:
        return {"scores": self.mode}

    def check_examples(self, ex: Examples) -> None:
        if not ex.columns["negatives"]:
            raise ConfigError(f"margin_mse: {', '.join(ex.files)} has no negative column (looked for negative, "
                              "negative_1, ...); name them with data.columns: {negatives: [COLUMN, ...]}.")
        self.mode = margin_source(self.scores, ex, self.cross_teacher, "margin_mse")

    def collate(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Queries (B, T) as input_ids/attention_mask; passages (B * P, T), P = 1 + k per query, positive
        first; the teacher's margins (B, k) or its pair inputs (B * P, T). A student with its own
        tokenizer gets both in its ids too (`student_input_ids`, `student_passage_ids`, ...)."""
        queries = [e["query"] for e in examples]
        passages = [p for e in examples for p in e["passages"]]
        k = len(examples[0]["passages"]) - 1
        batch = tokenize_texts(self.tokenizer, queries, self.max_length)
        p = tokenize_texts(self.tokenizer, passages, self.max_length)
        batch.update(passage_ids=p["input_ids"], passage_mask=p["attention_mask"])
        batch.update(self.own_tokens(queries, self.max_length))
        batch.update(self.own_tokens(passages, self.max_length, "passage_ids", "passage_mask"))
        if self.mode == "data":
            batch["target_margins"] = target_margins([e["label"] for e in examples], k)
        elif self.mode == "cross_encoder":
            pairs = self.cross_teacher.module.pairs([q for q, e in zip(queries, examples) for _ in e["passages"]],
                                                    passages, self.max_length)
            batch.update({f"pair_{n}": v for n, v in pairs.items()})
        return batch

    @torch.no_grad()
    def teacher_margins(self, batch: dict[str, torch.Tensor], b: int) -> torch.Tensor:
        """The teacher's margins (B, k) for the batch's examples."""
        if "target_margins" in batch:
            return batch["target_margins"]
        if self.mode == "cross_encoder":
            pairs = {n[len("pair_"):]: v for n, v in batch.items() if n.startswith("pair_")}
            return margins(self.cross_teacher(**pairs)["score"].float().view(b, -1))   # (B, 1 + k) -> (B, k)
        t_q = self.teacher_embedding(batch)                                          # (B, Dt)
        t_p = self.teacher_embedding({"input_ids": batch["passage_ids"], "attention_mask": batch["passage_mask"]})
        return margins(pair_dot_scores(t_q, t_p.view(b, -1, t_p.shape[-1])))

    def student_scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Dot products of each query's student embedding with its passages'. -> (B, 1 + k)."""
        b = batch["input_ids"].shape[0]
        e_q = self.student(*self.student_inputs(batch))["embedding"]                          # (B, D)
        e_p = self.student(*self.student_inputs(batch, "passage_ids", "passage_mask"))["embedding"]  # (B * P, D)
        return pair_dot_scores(e_q, e_p.view(b, -1, e_p.shape[-1]))

    def forward(self, batch):
        s = self.student_scores(batch)
        return {"margin": margin_mse(s, self.teacher_margins(batch, s.shape[0]))}
