"""Online distillation with balanced divergences (Amara, Ziaeefard, Meyer, Clark 2022, "BD-KD:
Balancing the Divergences for Online Knowledge Distillation").

Two students of the same architecture, from different initialisations, train together and teach
each other (no pretrained teacher). Each learns from the other's detached predictions with a
per-sample mix of forward KL (mean-seeking) and reverse KL (mode-seeking), weighted by the two
entropies: the more uncertain the learner is relative to its peer, the more weight the reverse,
sharpening term gets: w_rev = H(q) / (H(p) + H(q)), w_fwd = H(p) / (H(p) + H(q)), q the learner,
p the peer (our reading of the paper's entropy-based balance). The first student is the result;
the peer is an extra module owned by the method.
loss = CE_a + CE_b + w * (BD(a <- b) + BD(b <- a)), each BD scaled by T^2.
"""
from __future__ import annotations

import torch
from pydantic import Field
from typing_extensions import Annotated

from distill.methods.base import ClassifierMethod, masked_cross_entropy
from distill.families.classifier.common import reinitialised_copy
from distill.losses import divergence
from distill.models.outputs import logits_of
from distill.losses.relations import entropy
from distill.registry import register_method


def balanced_kl(s_logits: torch.Tensor, t_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy-balanced forward + reverse KL, batch mean, scaled by T^2. (B, C), (B, C) -> scalar."""
    t_logits = t_logits.detach()
    fwd = divergence(s_logits, t_logits, "forward_kl", temperature=temperature, reduction="none")
    rev = divergence(s_logits, t_logits, "reverse_kl", temperature=temperature, reduction="none")
    h_s, h_t = entropy(s_logits.detach(), temperature), entropy(t_logits, temperature)
    w_rev = h_s / (h_s + h_t).clamp(min=1e-8)
    return ((1.0 - w_rev) * fwd + w_rev * rev).mean() * temperature**2


@register_method("online_bdkd", family="classifier", description="BD-KD: two students teach each other with entropy-balanced forward/reverse KL (Amara 2022)",
                 injected=("student", "teacher"))
class OnlineBDKD(ClassifierMethod):
    needs_teacher = False

    def __init__(self, student, teacher=None, temperature: Annotated[float, Field(gt=0)] = 3.0,
                 weight: Annotated[float, Field(ge=0)] = 1.0, peer_seed: int = 1):
        super().__init__(student, None)
        self.temperature = temperature
        self.peer = reinitialised_copy(student, peer_seed)
        self.weights = {"ce": 1.0, "ce_peer": 1.0, "bd": weight}

    def hparams(self):
        return {"temperature": self.temperature}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        a, b = self.student_logits(batch["x"]), logits_of(self.peer(batch["x"]))
        y = batch["y"]
        return {"ce": masked_cross_entropy(a, y), "ce_peer": masked_cross_entropy(b, y),
                "bd": balanced_kl(a, b, self.temperature) + balanced_kl(b, a, self.temperature)}
