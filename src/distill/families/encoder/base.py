"""The shape every encoder method shares.

A method is an nn.Module owning the student (so it is optimised and saved) and any projections it
needs; the teacher is a frozen `Teacher` held by reference, never a submodule. `forward(batch)`
returns named loss terms (batch means); `self.weights` gives their default weights, which a
recipe's `weights:` overrides. Class attributes the runner and config read: `needs_teacher`,
`needs_layers` (distils transformer layers, so a static student cannot use it), `needs_attention`
(taps the query/key/value projections, so the layers must have separate ones).

Intermediate-layer methods also add the sentence-embedding term `embed` (1 - cosine to the
teacher's embedding, weight `embedding_weight`), so that the student's output is trained too;
set it to 0 for the intermediate term alone (e.g. the first stage of a two-stage recipe).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from distill.errors import ConfigError
from distill.families.encoder.losses import embedding_match
from distill.families.encoder.models import uniform_layers
from distill.taps import Taps
from distill.teacher import Teacher


class EncoderMethod(nn.Module):
    needs_teacher: bool = True
    needs_layers: bool = False
    needs_attention: bool = False
    cache_teacher: bool = False  # keep each sentence's teacher embedding (`teacher_embedding`)
    tokenizer = None  # methods that tokenize their own rows (`collate`): the teacher's tokenizer
    student_tokenizer = None  # ... and the student's where it has its own (None: it reads the teacher's ids)

    def __init__(self, student: nn.Module, teacher: Teacher | None):
        super().__init__()
        if self.needs_teacher and teacher is None:
            raise ValueError(f"{type(self).__name__} needs a teacher")
        if self.needs_layers and getattr(student, "is_static", False):
            raise ConfigError(f"{type(self).__name__}: the student has no transformer layers (student.kind=static).")
        self.student = student
        self._teacher = teacher
        self.weights: dict[str, float] = {}
        self._memo: dict[bytes, torch.Tensor] = {}

    @property
    def teacher(self) -> Teacher | None:
        return self._teacher

    # ---------------------------------------------------------------- forward passes
    @staticmethod
    def student_inputs(batch: dict[str, torch.Tensor], ids: str = "input_ids", mask: str = "attention_mask"
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """The student's (ids, mask) of a batch: its own (`student_<ids>`) where its tokenizer is not
        the teacher's, else the shared ones."""
        if f"student_{ids}" in batch:
            return batch[f"student_{ids}"], batch[f"student_{mask}"]
        return batch[ids], batch[mask]

    def own_tokens(self, texts: list[str], max_length: int, ids: str = "input_ids", mask: str = "attention_mask"
                   ) -> dict[str, torch.Tensor]:
        """`texts` in the student's own ids as `student_<ids>`, `student_<mask>` (what `student_inputs`
        reads), or nothing where the student reads the teacher's ids."""
        if self.student_tokenizer is None or self.student_tokenizer is self.tokenizer:
            return {}
        from distill.families.encoder.examples import tokenize_texts

        t = tokenize_texts(self.student_tokenizer, texts, max_length)
        return {f"student_{ids}": t["input_ids"], f"student_{mask}": t["attention_mask"]}

    def run_student(self, batch: dict[str, torch.Tensor], taps: list[str] = (), hidden: bool = False
                    ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """Student outputs and the tapped module outputs (by name)."""
        with Taps(self.student, taps) as tp:
            out = self.student(*self.student_inputs(batch), hidden=hidden)
        return out, dict(tp.outputs)

    @torch.no_grad()
    def run_teacher(self, batch: dict[str, torch.Tensor], taps: list[str] = (), hidden: bool = False
                    ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        assert self._teacher is not None
        with Taps(self._teacher.module, taps) as tp:
            out = self._teacher(batch["input_ids"], batch["attention_mask"], hidden=hidden)
        return out, dict(tp.outputs)

    def teacher_embedding(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The teacher's sentence embeddings (B, Dt). With `cache_teacher`, each sentence's embedding is
        computed the first time it is seen and kept on the CPU (the text has no random augmentation,
        so it is the same in every epoch); later epochs run the student alone."""
        if not self.cache_teacher:
            return self.run_teacher(batch)[0]["embedding"]
        ids, mask = batch["input_ids"], batch["attention_mask"].bool()
        keys = [ids[i, mask[i]].cpu().numpy().tobytes() for i in range(ids.shape[0])]
        new = [i for i, k in enumerate(keys) if k not in self._memo]
        if new:
            sub = {"input_ids": ids[new], "attention_mask": batch["attention_mask"][new]}
            e = self.run_teacher(sub)[0]["embedding"].float().cpu()
            for j, i in enumerate(new):
                self._memo[keys[i]] = e[j]
        return torch.stack([self._memo[k] for k in keys]).to(ids.device)

    def embed_term(self, e_s: torch.Tensor, e_t: torch.Tensor) -> torch.Tensor:
        return embedding_match(e_s, e_t, "cosine")

    # ---------------------------------------------------------------- layer mapping
    def layer_pairs(self, layer_map: str, pairs: list[tuple[int, int]] | None, last_k: int = 1
                    ) -> list[tuple[int, int]]:
        """(student layer, teacher layer) pairs, 0-based. uniform: each student layer to the teacher
        layer spread evenly (ending at the last); last_k: the last k of each; explicit: `pairs`."""
        n_s, n_t = self.student.num_layers, self._teacher.module.num_layers  # type: ignore[union-attr]
        if layer_map == "explicit":
            if not pairs:
                raise ConfigError("layer_map=explicit needs `pairs: [[student_layer, teacher_layer], ...]`.")
            bad = [p for p in pairs if not (0 <= p[0] < n_s and 0 <= p[1] < n_t)]
            if bad:
                raise ConfigError(f"pairs: {bad} out of range ({n_s} student, {n_t} teacher layers; 0-based).")
            return [tuple(p) for p in pairs]  # type: ignore[misc]
        if layer_map == "last_k":
            k = min(last_k, n_s, n_t)
            return [(n_s - k + i, n_t - k + i) for i in range(k)]
        return list(enumerate(uniform_layers(n_t, n_s)))

    def on_step(self, step: int, epoch: int) -> None:
        """Called before each step (the classifier methods' hook; schedules read it)."""

    def hparams(self) -> dict[str, Any]:
        return {}
