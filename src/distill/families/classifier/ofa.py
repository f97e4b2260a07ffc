"""One-for-All KD (Hao, Guo, Chen, Han, Zhang, Wang, Xu 2023, "One-for-All: Bridge the Gap
Between Heterogeneous Architectures in Knowledge Distillation").

Intermediate student features are projected into the logit space by small branches (1x1 conv +
pooling + linear for maps, an MLP for vectors), so teacher and student are compared where every
architecture agrees: the class distribution. Each branch and the final head learn from the
teacher with the OFA loss, the authors' -sum_c ((p_t + 1_y)^eps - 1_y)_c log p_s,c (adaptive
target enhancement; at eps = 1 it is cross-entropy to p_t, so the label enters only through the
CE term, once, as in the authors' distiller). Works between a CNN and an MLP or transformer. The
teacher's logits are its only signal, so a full-k output cache works.
loss = CE + w * [OFA(final) + sum_branches OFA(branch)]; branches are trained and then unused.
"""
from __future__ import annotations

import torch
from pydantic import Field
from torch import nn
from typing_extensions import Annotated

from distill.methods.base import ClassifierMethod, masked_cross_entropy
from distill.families.classifier.common import LayerTaps
from distill.methods.base import dense_teacher_logits
from distill.losses.relations import ofa_loss
from distill.registry import register_method


def logit_branch(shape: torch.Size, num_classes: int, width: int) -> nn.Module:
    if len(shape) == 4:
        return nn.Sequential(nn.Conv2d(shape[1], width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))
    return nn.Sequential(nn.Flatten(), nn.Linear(int(torch.Size(shape[1:]).numel()), width), nn.ReLU(),
                         nn.Linear(width, num_classes))


@register_method("ofa", family="classifier", description="One-for-All: student stages projected to logits, target-enhanced loss; cross-architecture (Hao 2023)",
                 injected=("student", "teacher"))
class OFA(ClassifierMethod):
    hard_labels = True  # labels index classes beyond the CE: no MixUp/CutMix
    supports_cache = True

    def __init__(self, student, teacher, student_layers: list[str] = [],  # noqa: B006
                 eps: Annotated[float, Field(ge=0)] = 1.0, temperature: Annotated[float, Field(gt=0)] = 1.0,
                 branch_width: Annotated[int, Field(ge=1)] = 64, weight: Annotated[float, Field(ge=0)] = 1.0):
        super().__init__(student, teacher)
        self.eps, self.temperature, self.branch_width = eps, temperature, branch_width
        self.s_taps = LayerTaps(student, student_layers)
        self.branches = nn.ModuleList()
        self.weights = {"ce": 1.0, "ofa": weight}

    def hparams(self):
        return {"eps": self.eps, "temperature": self.temperature, "layers": self.s_taps.layers}

    def setup(self, batch):
        with torch.no_grad():
            logits = self.student_logits(batch["x"])
        for f in self.s_taps.read():
            self.branches.append(logit_branch(f.shape, logits.shape[-1], self.branch_width))
        self.to(batch["x"].device)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self.student_logits(batch["x"])
        t = self.cache.temperature if self.cache is not None else 1.0
        t_logits = dense_teacher_logits(self.teacher_outputs(batch), logits.shape[-1], t)
        y = batch["y"]
        target = torch.where(y >= 0, y, t_logits.argmax(-1))
        loss = ofa_loss(logits, t_logits, target, self.eps, self.temperature)
        for branch, f in zip(self.branches, self.s_taps.read()):
            loss = loss + ofa_loss(branch(f), t_logits, target, self.eps, self.temperature)
        return {"ce": masked_cross_entropy(logits, y), "ofa": loss}
