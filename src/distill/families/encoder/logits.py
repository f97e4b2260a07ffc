"""The shared logit methods (`distill.methods`: the ones the classifier family runs) on an encoder's
classification head (`task:` recipes).

Each entry here is the classifier method itself (same class, same parameters, same loss code)
seen through an adapter: the encoder batch `{"input_ids", "attention_mask", "label"}` becomes the
classifier batch `{"x": (B, 2, T) ids and mask stacked, "y": label}`, and student and teacher become
modules mapping that `x` to head logits (B, C). Labels -1 (unlabeled task text) get the KD terms only.
A student with its own tokenizer reads its own ids: `x` is then (B, 4, T), the teacher's ids and
mask followed by the student's, both padded to the longer of the two.

    methods: [{name: ce}, {name: kd, params: {temperature: 4, alpha: 0.9}}, {name: dkd}, {name: dist}, {name: ls_kd}]
"""
from __future__ import annotations

import functools

import torch
from torch import nn

from distill.errors import ConfigError
from distill.methods import dist, dkd, kd, ls_kd, scratch
from distill.registry import register_method
from distill.teacher import Teacher


class HeadLogits(nn.Module):
    """A `TextClassifier` seen as a classifier: x (B, 2, T) = stacked ids and mask -> logits (B, C).
    On (B, 4, T) the teacher reads channels 0-1 and the student (`student=True`) channels 2-3, cut
    back to their own length."""

    def __init__(self, model: nn.Module, student: bool = False):
        super().__init__()
        self.model, self.student = model, student

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 2:
            return self.model(x[:, 0], x[:, 1])["logits"]
        o = 2 if self.student else 0
        ids, mask = x[:, o], x[:, o + 1]
        t = int(mask.sum(1).max())
        return self.model(ids[:, :t], mask[:, :t])["logits"]


def classifier_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Encoder batch -> classifier batch. (B, T) x2 + (B,) -> {"x": (B, 2, T), "y": (B,)}; with the
    student's own ids (B, T') x2 too, {"x": (B, 4, max(T, T'))}."""
    if "label" not in batch:
        raise ConfigError("a logit method needs labelled task batches: add a `task:` section to the recipe.")
    parts = [batch["input_ids"], batch["attention_mask"]]
    if "student_input_ids" in batch:
        parts += [batch["student_input_ids"], batch["student_attention_mask"]]
        t = max(p.shape[1] for p in parts)
        parts = [torch.nn.functional.pad(p, (0, t - p.shape[1])) for p in parts]
    return {"x": torch.stack(parts, 1), "y": batch["label"]}


def on_head(cls: type, name: str, description: str) -> type:
    """Register `cls` (a classifier method) in the encoder family, acting on the head's logits."""

    @functools.wraps(cls.__init__)  # the registry reads the classifier method's own parameters
    def __init__(self, student, teacher=None, **params):
        if not hasattr(student, "classifier"):
            raise ConfigError(f"{name}: the student has no classification head; add a `task:` section to the recipe.")
        t = Teacher(HeadLogits(teacher.module)) if teacher is not None else None
        cls.__init__(self, HeadLogits(student, student=True), t, **params)

    def forward(self, batch):
        return cls.forward(self, classifier_batch(batch))

    adapted = type(f"Head{cls.__name__}", (cls,), {
        "__init__": __init__, "forward": forward, "needs_labels": True, "needs_layers": False,
        "__doc__": f"{cls.__name__} on an encoder's classification head.\n\n{cls.__doc__ or ''}",
        "__module__": __name__})
    return register_method(name, family="encoder", description=description, injected=("student", "teacher"))(adapted)


CE = on_head(scratch.Scratch, "ce", "no teacher: cross-entropy on the task's labels (the head baseline)")
KD = on_head(kd.KD, "kd", "head logits: Hinton KD (T^2 KL to the teacher's head + CE), as the classifier family")
DKD = on_head(dkd.DKD, "dkd", "head logits: decoupled KD, target / non-target terms (Zhao 2022)")
DIST = on_head(dist.DIST, "dist", "head logits: DIST inter/intra-class Pearson relations (Huang 2022)")
LSKD = on_head(ls_kd.LSKD, "ls_kd", "head logits: KD on z-scored logits (Sun 2024)")
