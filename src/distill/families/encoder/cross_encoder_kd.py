"""Cross-encoder distillation: a small cross-encoder student learns a cross-encoder teacher's
relevance logits on (query, passage) pairs (MSE on logits, sentence-transformers'
`cross_encoder.losses.MSELoss`), and on (query, positive, negatives) rows optionally their margins
too (Margin-MSE, Hofstätter et al. 2020, as `cross_encoder.losses.MarginMSELoss`):

    score  = mean over pairs (s(q, d) - t(q, d))^2
    margin = mean over queries and negatives ((s(q, p) - s(q, n_i)) - (t(q, p) - t(q, n_i)))^2

The student is a smaller copy of the teacher's class (`student:` sizes; `init: teacher` copies the
chosen layers and the head), or the cross-encoder folder in `student_path`. It is saved as a
sentence-transformers CrossEncoder folder: `CrossEncoder(folder).predict(pairs)` gives the logits
the run evaluated.

Targets (`targets`): `cross_encoder` runs `teacher.cross_encoder`; `data` reads the rows' label
column (a pair's score; per triple k + 1 scores, or k margins for the margin term alone); `auto`
(default): data if the rows have a label column, else the cross-encoder.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from typing_extensions import Annotated

from distill.errors import ConfigError
from distill.families.encoder.base import EncoderMethod
from distill.families.encoder.cross import build_cross_student, CrossScorer, load_cross_encoder
from distill.families.encoder.examples import Examples, target_margins
from distill.families.encoder.losses import margin_mse, margins
from distill.registry import register_method


@register_method("cross_encoder_kd", family="encoder",
                 description="cross-encoder student: MSE on the teacher cross-encoder's pair logits, optional "
                             "Margin-MSE on triples",
                 injected=("student", "teacher", "cross_teacher", "max_length"))
class CrossEncoderKD(EncoderMethod):
    data_kind = "ranking"
    needs_teacher = False  # the teacher is the cross-encoder (`cross_teacher`), not the recipe's sentence encoder

    def __init__(self, student, teacher=None, cross_teacher=None, max_length: int = 64,
                 targets: Literal["auto", "data", "cross_encoder"] = "auto", student_path: str | None = None,
                 score_weight: Annotated[float, Field(ge=0)] = 1.0,
                 margin_weight: Annotated[float, Field(ge=0)] = 0.0):
        if not getattr(student, "is_cross_encoder", False):
            raise ConfigError("cross_encoder_kd trains a cross-encoder student; list it under `methods:` (it cannot "
                              "continue a bi-encoder student in `stages:`).")
        super().__init__(student, None)
        self.cross_teacher, self.max_length = cross_teacher, max_length
        self.targets, self.mode = targets, targets
        self.weights = {"score": score_weight, "margin": margin_weight}
        self.k = 0
        self.label_kind = "none"

    @classmethod
    def new_student(cls, ctx, params: dict[str, Any]) -> CrossScorer:
        """The student: `student_path` (a cross-encoder folder), else built from teacher.cross_encoder."""
        if params.get("student_path"):
            return load_cross_encoder(params["student_path"], "cross_encoder_kd.params.student_path")
        if ctx.cross_teacher is None:
            raise ConfigError("cross_encoder_kd builds its student from teacher.cross_encoder; set it (a "
                              "CrossEncoder folder), or give params.student_path.")
        if ctx.cfg.student.kind == "static":
            raise ConfigError("cross_encoder_kd: student.kind=static has no pair input; use student.kind: transformer.")
        return build_cross_student(ctx.cross_teacher.module, ctx.cfg.student, ctx.pad_id)

    def hparams(self) -> dict[str, Any]:
        return {"targets": self.mode}

    def check_examples(self, ex: Examples) -> None:
        if self.targets == "auto":
            self.mode = "data" if ex.has_labels else "cross_encoder"
        if self.mode == "cross_encoder" and self.cross_teacher is None:
            raise ConfigError("cross_encoder_kd: the rows have no label column, so the scores come from "
                              "teacher.cross_encoder; set it, or name the label column (data.columns: {label: COLUMN}).")
        if self.mode == "data" and not ex.has_labels:
            raise ConfigError(f"cross_encoder_kd: targets=data, but {', '.join(ex.files)} has no label column "
                              "(looked for label, margin, score, scores); name it with data.columns: {label: COLUMN}.")
        self.k = len(ex.columns["negatives"])
        if self.mode == "data":
            lab = ex.train[0]["label"]
            n = len(lab) if isinstance(lab, list) else 1
            self.label_kind = "scores" if n == self.k + 1 else "margins"
            if self.label_kind == "margins" and self.weights["score"] > 0:
                raise ConfigError(f"cross_encoder_kd: the label column {ex.columns['label'][0]!r} holds {n} margin(s) "
                                  "per row, not the scores the `score` term needs; give k + 1 scores (positive first), "
                                  "use teacher.cross_encoder (targets: cross_encoder), or set score_weight: 0.")
        if self.k == 0 and self.weights["margin"] > 0:
            raise ConfigError("cross_encoder_kd: margin_weight > 0 needs negatives (query, positive, negative columns); "
                              "the rows are (query, passage) pairs.")

    def collate(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """The student's pair inputs (B * P, T), P = 1 + k passages per query (positive first); the
        teacher's own pair inputs where its tokenizer differs; data targets (B, P) or (B, k)."""
        queries = [e["query"] for e in examples for _ in e["passages"]]
        passages = [p for e in examples for p in e["passages"]]
        batch = self.student.pairs(queries, passages, self.max_length)
        if self.mode == "data":
            labels = [e["label"] for e in examples]
            if self.label_kind == "scores" or self.k == 0:
                batch["target_scores"] = torch.tensor([v if isinstance(v, list) else [v] for v in labels],
                                                      dtype=torch.float32)
            else:
                batch["target_margins"] = target_margins(labels, self.k)
        elif self.cross_teacher.module.tokenizer is not self.student.tokenizer:
            t = self.cross_teacher.module.pairs(queries, passages, self.max_length)
            batch.update({f"teacher_{n}": v for n, v in t.items()})
        return batch

    def forward(self, batch):
        pair = {n: batch[n] for n in ("input_ids", "attention_mask", "token_type_ids") if n in batch}
        s = self.student(**pair)["score"].float()                                   # (B * P,)
        b = s.shape[0] // (self.k + 1)
        s = s.view(b, self.k + 1)                                                   # (B, P)
        if "target_margins" in batch:
            return {"margin": margin_mse(s, batch["target_margins"])}
        if "target_scores" in batch:
            t = batch["target_scores"].view(b, self.k + 1)
        else:
            t_in = {n[len("teacher_"):]: v for n, v in batch.items() if n.startswith("teacher_")} or pair
            with torch.no_grad():
                t = self.cross_teacher(**t_in)["score"].float().view(b, self.k + 1)
        terms = {"score": (s - t).pow(2).mean()}
        if self.k > 0:
            terms["margin"] = margin_mse(s, margins(t))
        return terms
