"""Probabilistic knowledge transfer (Passalis & Tefas 2018, "Learning Deep Representations with
Probabilistic Knowledge Transfer").

Each sample's cosine-similarity kernel over the batch, normalised into a conditional distribution
P(j | i), is matched with the shared KL. The loss is the authors' (`cosine_similarity_loss`): the
mean of P_t log(P_t / P_s) over all B x B entries, i.e. mean_i KL(P_t(.|i) || P_s(.|i)) / B, with
their default weight 30000 (RepDistiller, mdistiller). loss = CE + w * PKT. Feature sizes may differ.
Needs the live teacher (features).
"""
from __future__ import annotations

import torch
from pydantic import Field
from typing_extensions import Annotated

from distill.families.classifier.common import PENULTIMATE, FeatureMethod, flat_features
from distill.losses.features import pkt_loss
from distill.registry import register_method


def pkt_batch_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """PKT as the authors average it: over all B x B entries of the conditionals. (B, Ds), (B, Dt)."""
    # pkt_loss averages the per-anchor KL (a sum over the B neighbours) over the B anchors;
    # the reference's mean over the B x B matrix is that divided by B.
    return pkt_loss(f_s, f_t) / f_s.shape[0]


@register_method("pkt", family="classifier", description="PKT: match conditional similarity distributions with KL (Passalis 2018)",
                 injected=("student", "teacher"))
class PKT(FeatureMethod):
    def __init__(self, student, teacher, student_layers: list[str] = [PENULTIMATE],  # noqa: B006
                 teacher_layers: list[str] = [PENULTIMATE],  # noqa: B006
                 weight: Annotated[float, Field(ge=0)] = 30000.0, kd_weight: Annotated[float, Field(ge=0)] = 0.0):
        super().__init__(student, teacher, student_layers, teacher_layers)
        self.kd_weight = kd_weight
        self.weights = {"ce": 1.0, "pkt": weight, "kd": kd_weight}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits, t_logits, f_s, f_t = self.features(batch)
        terms = self.base_terms(logits, t_logits, batch["y"], self.kd_weight)
        terms["pkt"] = sum(pkt_batch_loss(flat_features(s), flat_features(t)) for s, t in zip(f_s, f_t))
        return terms
