"""Feature-level distillation losses: pure functions over student and teacher features.

Features are (B, C, H, W) maps or (B, D) vectors; the teacher side is always detached here, so a
caller may pass live activations. Every loss returns a scalar (a batch mean) in fp32.

- attention transfer (Zagoruyko & Komodakis 2017): `attention_map`, `at_loss`
- similarity preserving (Tung & Mori 2019): `similarity_gram`, `sp_loss`
- probabilistic knowledge transfer (Passalis & Tefas 2018): `cosine_conditional`, `pkt_loss`
- neuron selectivity transfer (Huang & Wang 2017): `nst_loss` (MMD, polynomial kernel)
- variational information distillation (Ahn et al. 2019): `gaussian_nll`
- contrastive representation distillation (Tian et al. 2020): `info_nce`
- review KD's hierarchical context loss (Chen et al. 2021): `hcl_loss`
Relation losses over a batch (RKD, CC) and logit relations (DIST, OFA) are in `relations.py`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.losses.divergences import divergence_from_logprobs


def tokens_as_map(f: Tensor) -> Tensor:
    """Token features of a vision transformer (B, T, D) as a map of its patch tokens (B, D, h, w).

    The leading tokens that are not patches (class, distillation, register tokens: up to 8) are
    dropped so that the rest tiles a square grid; a length that tiles no square is read as a
    (B, D, T, 1) map. Maps (B, C, H, W) and vectors (B, D) pass through."""
    if f.dim() != 3:
        return f
    b, t, d = f.shape
    for extra in range(0, min(9, t)):
        side = math.isqrt(t - extra)
        if side * side == t - extra and side > 0:
            return f[:, extra:].transpose(1, 2).reshape(b, d, side, side)
    return f.transpose(1, 2).unsqueeze(-1)


def match_spatial(f_s: Tensor, f_t: Tensor) -> Tensor:
    """Resize student maps (B, C, h, w) to the teacher's (H, W) (bilinear); vectors pass through."""
    if f_s.dim() == 4 and f_t.dim() == 4 and f_s.shape[-2:] != f_t.shape[-2:]:
        return F.interpolate(f_s, size=f_t.shape[-2:], mode="bilinear", align_corners=False)
    return f_s


def attention_map(f: Tensor, p: float = 2.0) -> Tensor:
    """Spatial attention: mean over channels of |f|^p, flattened and L2-normalised.

    (B, C, H, W) -> (B, H*W); a vector (B, D) is read as one channel over D positions -> (B, D).
    """
    f = f.float()
    a = f.abs().pow(p).mean(1) if f.dim() == 4 else f.abs().pow(p)
    return F.normalize(a.flatten(1), dim=1)


def at_loss(f_s: Tensor, f_t: Tensor, p: float = 2.0) -> Tensor:
    """Attention transfer: batch mean of || Q_s/|Q_s| - Q_t/|Q_t| ||_2^2 (channel counts may differ)."""
    f_s = match_spatial(f_s, f_t)
    a_s, a_t = attention_map(f_s, p), attention_map(f_t.detach(), p)
    if a_s.shape[1] != a_t.shape[1]:  # vectors of different lengths: resample the student's
        a_s = F.normalize(F.interpolate(a_s[:, None], size=a_t.shape[1], mode="linear",
                                        align_corners=False)[:, 0], dim=1)
    return (a_s - a_t).pow(2).sum(1).mean()


def similarity_gram(f: Tensor) -> Tensor:
    """Row-normalised batch similarity G = normalize(F F^T). (B, ...) -> (B, B)."""
    f = f.float().flatten(1)
    return F.normalize(f @ f.t(), dim=1)


def sp_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """Similarity preserving: ||G_s - G_t||_F^2 / B^2 (feature sizes may differ)."""
    b = f_s.shape[0]
    return (similarity_gram(f_s) - similarity_gram(f_t.detach())).pow(2).sum() / b**2


def cosine_conditional(f: Tensor) -> Tensor:
    """P(j | i) from cosine similarities mapped to [0, 1] and normalised per row. (B, ...) -> (B, B)."""
    f = F.normalize(f.float().flatten(1), dim=1)
    k = (f @ f.t() + 1.0) / 2.0
    return k / k.sum(1, keepdim=True)


def pkt_loss(f_s: Tensor, f_t: Tensor, eps: float = 1e-7) -> Tensor:
    """Probabilistic knowledge transfer: mean over anchors of KL(P_t(.|i) || P_s(.|i))."""
    lp_s = cosine_conditional(f_s).clamp(min=eps).log()
    lp_t = cosine_conditional(f_t.detach()).clamp(min=eps).log()
    return divergence_from_logprobs(lp_s, lp_t, "forward_kl").mean()


def _channel_distributions(f: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, C, H*W), each channel's activation pattern L2-normalised over positions."""
    if f.dim() != 4:
        from distill.errors import ConfigError

        raise ConfigError(f"nst: layers must give feature maps (B, C, H, W), got {tuple(f.shape)}; "
                          "name convolutional layers in student_layers / teacher_layers.")
    return F.normalize(f.float().flatten(2), dim=2)


def nst_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """Neuron selectivity transfer: squared MMD with k(x, y) = (x . y)^2 between the sets of
    student and teacher channel patterns of each sample (channel counts may differ)."""
    f_s = match_spatial(f_s, f_t)
    s, t = _channel_distributions(f_s), _channel_distributions(f_t.detach())  # (B, Cs, N), (B, Ct, N)
    k_ss = torch.bmm(s, s.transpose(1, 2)).pow(2).mean((1, 2))
    k_tt = torch.bmm(t, t.transpose(1, 2)).pow(2).mean((1, 2))
    k_st = torch.bmm(s, t.transpose(1, 2)).pow(2).mean((1, 2))
    return (k_ss + k_tt - 2.0 * k_st).mean()


def gaussian_nll(mean: Tensor, target: Tensor, log_scale: Tensor) -> Tensor:
    """-log N(target; mean, sigma^2) without the constant 0.5 log 2 pi, averaged over every element.

    VID's variational bound: mean, target (B, C, ...) and log_scale = log sigma, broadcastable
    (one learned value per channel in the paper).
    """
    target = target.detach().float()
    z = (target - mean.float()) * torch.exp(-log_scale)
    return (0.5 * z.pow(2) + log_scale).mean()


def info_nce(anchor: Tensor, positive: Tensor, negatives: Tensor | None = None, temperature: float = 0.07) -> Tensor:
    """InfoNCE over L2-normalised embeddings (CRD's contrastive objective, queue or in-batch form).

    anchor, positive: (B, D). negatives: (K, D), e.g. a queue of past embeddings; None uses the
    batch's other positives as negatives (the positive of row i is column i).
    """
    a, p = F.normalize(anchor.float(), dim=1), F.normalize(positive.float(), dim=1)
    if negatives is None:
        logits = a @ p.t() / temperature                           # (B, B)
        target = torch.arange(a.shape[0], device=a.device)
    else:
        n = F.normalize(negatives.float(), dim=1)
        logits = torch.cat([(a * p).sum(1, keepdim=True), a @ n.t()], 1) / temperature  # (B, 1 + K)
        target = torch.zeros(a.shape[0], dtype=torch.long, device=a.device)
    return F.cross_entropy(logits, target)


def hcl_loss(f_s: Tensor, f_t: Tensor, levels: tuple[int, ...] = (4, 2, 1)) -> Tensor:
    """Hierarchical context loss: MSE at full resolution plus MSE of average-pooled pyramids
    (each coarser level weighted half the previous), normalised by the total weight. (B, C, H, W)."""
    f_s, f_t = f_s.float(), f_t.detach().float()
    if f_s.dim() != 4:
        return F.mse_loss(f_s, f_t)
    loss, total, w = F.mse_loss(f_s, f_t), 1.0, 1.0
    for lv in levels:
        if lv >= f_t.shape[-1]:
            continue
        w /= 2.0
        loss = loss + w * F.mse_loss(F.adaptive_avg_pool2d(f_s, lv), F.adaptive_avg_pool2d(f_t, lv))
        total += w
    return loss / total
