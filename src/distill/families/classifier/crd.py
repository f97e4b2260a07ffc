"""Contrastive representation distillation (Tian, Krishnan, Isola 2020, "Contrastive
Representation Distillation").

Student and teacher embeddings (each through a learned linear head to `dim`, L2-normalised) of the
same image are a positive pair; embeddings of other images are negatives. The loss is a
symmetric InfoNCE at temperature tau: student anchors against teacher keys, and teacher anchors
against student keys. Negatives come from the batch (`queue_size: 0`) or from FIFO queues of past
embeddings (MoCo-style, `queue_size: K`), never from a data-set-sized memory bank.
loss = CE + w * InfoNCE (+ optional KD). Works across architectures. Needs the live teacher.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from typing_extensions import Annotated

from distill.families.classifier.common import PENULTIMATE, FeatureMethod, embedder
from distill.losses.features import info_nce
from distill.registry import register_method


@register_method("crd", family="classifier", description="CRD: contrastive student-teacher embeddings, in-batch or queue negatives (Tian 2020)",
                 injected=("student", "teacher"))
class CRD(FeatureMethod):
    def __init__(self, student, teacher, student_layer: str = PENULTIMATE, teacher_layer: str = PENULTIMATE,
                 dim: Annotated[int, Field(ge=2)] = 128, tau: Annotated[float, Field(gt=0)] = 0.1,
                 queue_size: Annotated[int, Field(ge=0)] = 0, weight: Annotated[float, Field(ge=0)] = 0.8,
                 kd_weight: Annotated[float, Field(ge=0)] = 0.0):
        super().__init__(student, teacher, [student_layer], [teacher_layer])
        self.dim, self.tau, self.queue_size, self.kd_weight = dim, tau, queue_size, kd_weight
        self.weights = {"ce": 1.0, "crd": weight, "kd": kd_weight}
        if queue_size:
            self.register_buffer("queue_s", F.normalize(torch.randn(queue_size, dim), dim=1))
            self.register_buffer("queue_t", F.normalize(torch.randn(queue_size, dim), dim=1))
            self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def hparams(self):
        return {"dim": self.dim, "tau": self.tau, "queue_size": self.queue_size}

    def build(self, f_s, f_t):
        self.embed_s = embedder(f_s[0].shape, self.dim)
        self.embed_t = embedder(f_t[0].shape, self.dim)

    @torch.no_grad()
    def enqueue(self, e_s: torch.Tensor, e_t: torch.Tensor) -> None:
        """Overwrite the oldest queue rows with this batch's (detached, normalised) embeddings."""
        n = min(e_s.shape[0], self.queue_size)
        idx = (self.queue_ptr + torch.arange(n, device=e_s.device)) % self.queue_size
        self.queue_s[idx] = F.normalize(e_s[:n].float(), dim=1)
        self.queue_t[idx] = F.normalize(e_t[:n].float(), dim=1)
        self.queue_ptr.fill_(int((self.queue_ptr + n) % self.queue_size))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits, t_logits, (f_s,), (f_t,) = self.features(batch)
        terms = self.base_terms(logits, t_logits, batch["y"], self.kd_weight)
        e_s, e_t = self.embed_s(f_s), self.embed_t(f_t)
        if self.queue_size:
            q_s, q_t = self.queue_s.clone(), self.queue_t.clone()
            terms["crd"] = info_nce(e_s, e_t, q_t, self.tau) + info_nce(e_t, e_s, q_s, self.tau)
            if self.training:
                self.enqueue(e_s.detach(), e_t.detach())
        else:
            terms["crd"] = info_nce(e_s, e_t, None, self.tau) + info_nce(e_t, e_s, None, self.tau)
        return terms
