"""FF-G2M (Wu, Lin, Zhao, Wang, Li 2023, "Extracting Low-/High-Frequency Knowledge from Graph
Neural Networks and Injecting it into MLPs: An Effective GNN-to-MLP Distillation Framework").
Teacher logits z, student logits h, softmax at temperature T:

    L_LFK = mean_{(i,j) in E + self loops} KL(sigma(z_j / T) || sigma(h_i / T))          (low frequency)
    L_HFK = mean_{(i,j) in E} KL(sigma((z_i - z_j) / T) || sigma((h_i - h_j) / T))      (high frequency)
    L = lam * CE(labelled) + (1 - lam) * L_LFK + hfk_weight * L_HFK

Low frequency: what neighbours share (the teacher's smoothed prediction); high frequency: how a
node differs from its neighbours, which a node-wise loss alone lets the student forget. Both KLs
are the shared `distill.losses.divergence`. With `lfk_neighbours=false` the LFK term is node-wise.
"""
from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor
from typing_extensions import Annotated

from distill.families.graph.base import GraphMethod, masked_cross_entropy
from distill.losses import divergence as shared_divergence
from distill.registry import register_method


@register_method("ffg2m", family="graph", description="FF-G2M: low-frequency (neighbour) + high-frequency (difference) KD (Wu 2023)",
                 injected=("student", "teacher"))
class FFG2M(GraphMethod):
    def __init__(self, student, teacher, lam: Annotated[float, Field(ge=0, le=1)] = 0.0,
                 hfk_weight: Annotated[float, Field(ge=0)] = 1.0, temperature: Annotated[float, Field(gt=0)] = 1.0,
                 lfk_neighbours: bool = True):
        super().__init__(student, teacher)
        self.lam, self.temperature, self.lfk_neighbours = lam, temperature, lfk_neighbours
        self.weights = {"ce": lam, "lfk": 1.0 - lam, "hfk": hfk_weight}

    def hparams(self):
        return {"lam": self.lam, "hfk_weight": self.weights["hfk"], "temperature": self.temperature}

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        assert self.ctx is not None and self.teacher_logits is not None
        idx, t, T = batch["idx"], self.teacher_logits, self.temperature
        src, dst = self.ctx.ops.edge_index                  # messages src -> dst; dst = the node i
        in_batch = torch.zeros(self.ctx.x.shape[0], dtype=torch.bool, device=idx.device)
        in_batch[idx] = True
        keep = in_batch[dst]
        src, dst = src[keep], dst[keep]                     # edges (j -> i) with i in the batch
        nodes = torch.unique(torch.cat([idx, src]))         # the batch and its neighbours
        h_all = self.student_logits(nodes)                  # (M, C)
        pos = lambda v: torch.searchsorted(nodes, v)        # noqa: E731  node id -> row of h_all
        h_b = h_all[pos(idx)]
        if self.lfk_neighbours:
            lfk_s = torch.cat([h_b, h_all[pos(dst)]])       # student at i, for self loops and edges
            lfk_t = torch.cat([t[idx], t[src]])             # teacher at j (j = i for self loops)
        else:
            lfk_s, lfk_t = h_b, t[idx]
        lfk = shared_divergence(lfk_s, lfk_t, temperature=T) * T**2
        if src.numel():
            hfk = shared_divergence(h_all[pos(dst)] - h_all[pos(src)], t[dst] - t[src], temperature=T) * T**2
        else:
            hfk = h_b.sum() * 0.0
        return {"ce": masked_cross_entropy(h_b, self.labels(idx)), "lfk": lfk, "hfk": hfk}
