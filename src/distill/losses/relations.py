"""Relation losses: structure across the samples of a batch (RKD, CC) and across classes (DIST),
plus logit transforms and targets used by logit methods (logit standardisation, OFA).

Inputs are student and teacher tensors of the same leading batch size B; the teacher side is
detached; every loss is a scalar in fp32. KL terms use the shared `divergences` module.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def pairwise_distances(f: Tensor, eps: float = 1e-12) -> Tensor:
    """Euclidean distances (B, B) between rows of f (B, ...), 0 on the diagonal, finite gradients."""
    f = f.float().flatten(1)
    sq = f.pow(2).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * f @ f.t()).clamp(min=eps)
    eye = torch.eye(f.shape[0], device=f.device, dtype=torch.bool)
    return d2.sqrt().masked_fill(eye, 0.0)


def rkd_distance_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """RKD-D (Park et al. 2019, eq. 5; the authors' `RkdDistance`): Huber loss between pairwise
    distance matrices, each normalised by its mean off-diagonal distance (so feature scales and
    sizes may differ). As in the authors' code the Huber loss averages over all B x B entries,
    the zero diagonal included. (B, ...), (B, ...) -> scalar."""
    b = f_s.shape[0]
    off = ~torch.eye(b, device=f_s.device, dtype=torch.bool)
    d_s, d_t = pairwise_distances(f_s), pairwise_distances(f_t.detach())  # (B, B), 0 on the diagonal
    d_s = d_s / d_s[off].mean().clamp(min=1e-12)
    d_t = d_t / d_t[off].mean().clamp(min=1e-12)
    return F.smooth_l1_loss(d_s, d_t)


def triplet_angles(f: Tensor) -> Tensor:
    """cos of the angle at vertex j for every (i, j, k): <e_ji, e_jk>, e = unit difference vectors.
    (B, ...) -> (B, B, B) indexed [j, i, k]."""
    f = f.float().flatten(1)
    e = F.normalize(f[None, :, :] - f[:, None, :], dim=2)  # e[j, i] = unit(f_i - f_j): (B, B, D)
    return torch.bmm(e, e.transpose(1, 2))


def rkd_angle_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """RKD-A (Park et al. 2019, eq. 7; the authors' `RkdAngle`): Huber loss between triplet angle
    cosines, averaged over all B^3 triplets (degenerate ones, with i = j or k = j, are 0 on both sides)."""
    return F.smooth_l1_loss(triplet_angles(f_s), triplet_angles(f_t.detach()))


def gaussian_correlation(f: Tensor, gamma: float = 0.4, order: int = 2) -> Tensor:
    """Instance correlation with a Gaussian RBF kernel exp(-gamma |a - b|^2) on L2-normalised
    embeddings, by its order-P Taylor expansion (Peng et al. 2019, CC eq. 9). (B, D) -> (B, B)."""
    f = F.normalize(f.float().flatten(1), dim=1)
    s = f @ f.t()
    out = torch.zeros_like(s)
    for p in range(order + 1):
        out = out + math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * s.pow(p)
    return out


def cc_loss(f_s: Tensor, f_t: Tensor, gamma: float = 0.4, order: int = 2) -> Tensor:
    """Correlation congruence: ||C_s - C_t||_F^2 / B^2 (embedding sizes may differ)."""
    b = f_s.shape[0]
    return (gaussian_correlation(f_s, gamma, order) - gaussian_correlation(f_t.detach(), gamma, order)
            ).pow(2).sum() / b**2


def pearson_distance(a: Tensor, b: Tensor, dim: int, eps: float = 1e-8) -> Tensor:
    """1 - Pearson correlation along `dim` (the other dims are kept)."""
    a = a - a.mean(dim, keepdim=True)
    b = b - b.mean(dim, keepdim=True)
    return 1.0 - (a * b).sum(dim) / (a.norm(dim=dim) * b.norm(dim=dim) + eps)


def dist_terms(s_logits: Tensor, t_logits: Tensor, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """DIST (Huang et al. 2022, eq. 5-7): (inter-class, intra-class) Pearson distances between
    softened predictions, each scaled by T^2. (B, C), (B, C)."""
    p_s = F.softmax(s_logits.float() / temperature, -1)
    p_t = F.softmax(t_logits.detach().float() / temperature, -1)
    inter = pearson_distance(p_s, p_t, dim=1).mean()   # per sample, across classes
    intra = pearson_distance(p_s, p_t, dim=0).mean()   # per class, across the batch
    return inter * temperature**2, intra * temperature**2


def standardize_logits(z: Tensor, eps: float = 1e-7) -> Tensor:
    """Z-score over classes: (z - mean) / std (Sun et al. 2024, logit standardisation). (..., C)."""
    z = z.float()
    return (z - z.mean(-1, keepdim=True)) / (z.std(-1, keepdim=True) + eps)


def ofa_loss(s_logits: Tensor, t_logits: Tensor, target: Tensor, eps: float = 1.0, temperature: float = 1.0) -> Tensor:
    """OFA (Hao et al. 2023, eq. 6; the authors' `ofa_loss`): cross-entropy to the teacher's
    distribution with adaptive target enhancement, -sum_c ((p_t + 1_y)^eps - 1_y)_c log p_s,c.

    The target class weighs (1 + p_t^y)^eps - 1, every other class (p_t^c)^eps. eps = 1 gives plain
    cross-entropy to p_t, with no label term (the label is counted once, in the method's separate
    CE); eps > 1 raises the target's weight relative to the other classes, whose p_t^eps shrink.
    (B, C), (B, C), target (B,) long.
    """
    p_t = F.softmax(t_logits.detach().float() / temperature, -1)            # (B, C)
    lp_s = F.log_softmax(s_logits.float() / temperature, -1)                 # (B, C)
    onehot = F.one_hot(target, p_t.shape[-1]).to(p_t.dtype)                  # (B, C)
    w = (p_t + onehot).pow(eps) - onehot                                     # (B, C) enhanced target
    return -(w * lp_s).sum(-1).mean()


def entropy(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Shannon entropy (nats) of softmax(logits / T) over the last dim. (..., C) -> (...)."""
    lp = F.log_softmax(logits.float() / temperature, -1)
    return -(lp.exp() * lp).sum(-1)
