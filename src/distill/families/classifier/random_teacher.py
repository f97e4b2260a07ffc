"""Self-distillation from a random teacher (Sarnthein, Bachmann, Anagnostidis, Hofmann 2023,
"Random Teachers are Good Teachers").

The teacher is a frozen, randomly initialised copy of the student's architecture (with a frozen
random projection head); the student, through its own trainable head of the same shape, matches
the teacher's softened head outputs with the shared KL (DINO-style, without augmentations). The
paper finds this alone improves the student's representation; here it is paired with CE on
labels (ce_weight) so the result is a classifier. No pretrained teacher is used.
"""
from __future__ import annotations

import torch
from pydantic import Field
from torch import nn
from typing_extensions import Annotated

from distill.methods.base import ClassifierMethod, masked_cross_entropy
from distill.families.classifier.common import PENULTIMATE, LayerTaps, reinitialised_copy
from distill.losses import divergence
from distill.registry import register_method
from distill.teacher import Teacher


@register_method("random_teacher", family="classifier", description="Self-distillation from a frozen randomly initialised teacher (Sarnthein 2023)",
                 injected=("student", "teacher"))
class RandomTeacher(ClassifierMethod):
    needs_teacher = False

    def __init__(self, student, teacher=None, teacher_seed: int = 1234, head_dim: Annotated[int, Field(ge=2)] = 256,
                 temperature: Annotated[float, Field(gt=0)] = 0.1, weight: Annotated[float, Field(ge=0)] = 1.0,
                 ce_weight: Annotated[float, Field(ge=0)] = 1.0):
        super().__init__(student, None)
        self.teacher_seed, self.head_dim, self.temperature = teacher_seed, head_dim, temperature
        self.random_teacher = Teacher(reinitialised_copy(student, teacher_seed), name="random_teacher")
        self.s_taps = LayerTaps(student, [PENULTIMATE])
        self.t_taps = LayerTaps(self.random_teacher.module, [PENULTIMATE])
        self.head: nn.Module | None = None
        self.teacher_head: Teacher | None = None
        self.weights = {"ce": ce_weight, "rt": weight}

    def hparams(self):
        return {"teacher_seed": self.teacher_seed, "head_dim": self.head_dim, "temperature": self.temperature}

    def setup(self, batch):
        device = batch["x"].device
        self.random_teacher.to(device)
        self.s_taps.ensure(batch["x"])
        self.t_taps.ensure(batch["x"])
        with torch.no_grad():
            self.student_logits(batch["x"])
        d = self.s_taps.read()[0].flatten(1).shape[1]
        self.head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, self.head_dim)).to(device)
        self.teacher_head = Teacher(reinitialised_copy(self.head, self.teacher_seed + 1).to(device), name="random_head")

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.s_taps.ensure(batch["x"])
        self.t_taps.ensure(batch["x"])
        logits = self.student_logits(batch["x"])
        self.random_teacher(batch["x"])
        (f_s,), (f_t,) = self.s_taps.read(), self.t_taps.read()
        assert self.head is not None and self.teacher_head is not None, "setup() was not called"
        h_s, h_t = self.head(f_s.flatten(1)), self.teacher_head(f_t.flatten(1))
        return {"ce": masked_cross_entropy(logits, batch["y"]),
                "rt": divergence(h_s, h_t, temperature=self.temperature)}
