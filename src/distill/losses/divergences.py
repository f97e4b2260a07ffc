"""Divergences between a teacher and a student categorical distribution.

One implementation serves the classifier family (logits (B, C)) and language models
(logits (B, T, V)): every function takes `student_logits` and `teacher_logits` of shape
(..., V) and an optional boolean `mask` of shape (...) (True = position counts).

Supports:
- dense: the full distribution;
- `top_k=k`: bins = union of the teacher's and the student's top-k indices, plus one tail bucket
  holding the remaining mass of each side (exact when k = V);
- `chunk_size=n`: positions are processed n at a time under activation checkpointing, so the fp32
  (positions, V) log-probabilities exist for one chunk only, in the forward and the backward pass;
- `sparse_divergence`: a teacher given only as top-k (indices, log-probs), e.g. from a cache.

Softmax is always taken in fp32. Reductions: "mean" over counted positions (an all-masked batch
gives 0, not NaN), "sum" (divide by a global count yourself, e.g. under gradient accumulation),
or "none" (per position, zero where masked).

Definitions (p = teacher, q = student, at temperature T):
- forward_kl: KL(p || q)                       (Hinton et al. 2015; the classic KD term)
- reverse_kl: KL(q || p)
- generalized_jsd(beta): beta KL(p||m) + (1-beta) KL(q||m), m = beta p + (1-beta) q
  (Agarwal et al. 2024, GKD, eq. 3); beta = 0 is defined as forward KL and beta = 1 as reverse KL,
  the normalised limits used by GKD's implementation.
- skew_kl(alpha): KL(p || alpha p + (1-alpha) q); skew_reverse_kl(alpha): KL(q || alpha q + (1-alpha) p)
  (Ko et al. 2024, DistiLLM, eq. 2-3)
- tvd: 0.5 * sum |p - q|  (Wen et al. 2023, f-divergence KD)
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

Kind = Literal["forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd"]
DIVERGENCES: tuple[str, ...] = ("forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd")
Reduction = Literal["mean", "sum", "none"]

# log-probs are clamped here so that 0 * log 0 terms are 0 with finite gradients
_LOG_FLOOR = -1.0e4


def _kl_terms(lp_a: Tensor, lp_b: Tensor) -> Tensor:
    """Per-bin terms of KL(a || b) from log-probs (..., K)."""
    return lp_a.exp() * (lp_a - lp_b)


def _mix(lp_a: Tensor, lp_b: Tensor, w_a: float) -> Tensor:
    """log(w_a * a + (1 - w_a) * b) from log-probs, stably."""
    return torch.logaddexp(lp_a + math.log(w_a), lp_b + math.log1p(-w_a))


def divergence_from_logprobs(
    lp_student: Tensor,
    lp_teacher: Tensor,
    kind: Kind = "forward_kl",
    *,
    beta: float = 0.5,
    alpha: float = 0.1,
    bin_mask: Tensor | None = None,
) -> Tensor:
    """Per-position divergence (...,) between two distributions given as log-probs (..., K) in fp32.

    `bin_mask` (..., K) marks bins that exist (False bins hold no mass on either side).
    """
    lp_s = lp_student.clamp(min=_LOG_FLOOR)
    lp_t = lp_teacher.clamp(min=_LOG_FLOOR)
    if kind == "forward_kl" or (kind == "jsd" and beta == 0.0):
        terms = _kl_terms(lp_t, lp_s)
    elif kind == "reverse_kl" or (kind == "jsd" and beta == 1.0):
        terms = _kl_terms(lp_s, lp_t)
    elif kind == "jsd":
        if not 0.0 < beta < 1.0:
            raise ValueError(f"jsd: beta must be in [0, 1], got {beta}")
        lp_m = _mix(lp_t, lp_s, beta)
        terms = beta * _kl_terms(lp_t, lp_m) + (1.0 - beta) * _kl_terms(lp_s, lp_m)
    elif kind == "skew_kl":
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"skew_kl: alpha must be in [0, 1), got {alpha}")
        lp_m = lp_s if alpha == 0.0 else _mix(lp_t, lp_s, alpha)
        terms = _kl_terms(lp_t, lp_m)
    elif kind == "skew_reverse_kl":
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"skew_reverse_kl: alpha must be in [0, 1), got {alpha}")
        lp_m = lp_t if alpha == 0.0 else _mix(lp_s, lp_t, alpha)
        terms = _kl_terms(lp_s, lp_m)
    elif kind == "tvd":
        terms = 0.5 * (lp_t.exp() - lp_s.exp()).abs()
    else:
        raise ValueError(f"unknown divergence {kind!r}; allowed: {', '.join(DIVERGENCES)}")
    if bin_mask is not None:
        terms = terms.masked_fill(~bin_mask, 0.0)
    return terms.sum(-1)


def _reduce(per_pos: Tensor, mask: Tensor | None, reduction: Reduction) -> Tensor:
    if mask is not None:
        per_pos = per_pos.masked_fill(~mask, 0.0)
    if reduction == "none":
        return per_pos
    total = per_pos.sum()
    if reduction == "sum":
        return total
    count = per_pos.numel() if mask is None else mask.sum()
    return total / torch.clamp(torch.as_tensor(count, device=per_pos.device, dtype=per_pos.dtype), min=1.0)


def _align_vocab(student_logits: Tensor, teacher_logits: Tensor) -> tuple[Tensor, Tensor]:
    """Same tokenizer, different padded vocab sizes: drop the padding rows of the larger one."""
    v = min(student_logits.shape[-1], teacher_logits.shape[-1])
    return student_logits[..., :v], teacher_logits[..., :v]


def _log_tail(lp_bins: Tensor, bin_mask: Tensor) -> Tensor:
    """log(1 - sum of the probabilities in the valid bins), clamped to the log floor."""
    mass = lp_bins.exp().masked_fill(~bin_mask, 0.0).sum(-1, keepdim=True)
    return torch.log1p(-mass.clamp(max=1.0 - 1e-7)).clamp(min=_LOG_FLOOR)


def _topk_per_position(
    lp_s: Tensor, lp_t: Tensor, k: int, kind: Kind, beta: float, alpha: float
) -> Tensor:
    """Divergence over the union of both top-k index sets plus a tail bucket. lp_*: (N, V) fp32."""
    k = min(k, lp_s.shape[-1])
    idx = torch.cat([lp_t.topk(k, dim=-1).indices, lp_s.topk(k, dim=-1).indices], dim=-1)  # (N, 2k)
    idx, _ = idx.sort(dim=-1)
    valid = torch.ones_like(idx, dtype=torch.bool)
    valid[:, 1:] = idx[:, 1:] != idx[:, :-1]  # keep the first of each repeated index
    bins_s, bins_t = lp_s.gather(-1, idx), lp_t.gather(-1, idx)
    tail_s, tail_t = _log_tail(bins_s, valid), _log_tail(bins_t, valid)
    lp_s_b = torch.cat([bins_s, tail_s], -1)
    lp_t_b = torch.cat([bins_t, tail_t], -1)
    valid = torch.cat([valid, torch.ones_like(valid[:, :1])], -1)
    return divergence_from_logprobs(lp_s_b, lp_t_b, kind, beta=beta, alpha=alpha, bin_mask=valid)


def _per_position(
    s: Tensor, t: Tensor, kind: Kind, temperature: float, beta: float, alpha: float, top_k: int | None
) -> Tensor:
    lp_s = F.log_softmax(s.float() / temperature, dim=-1)
    lp_t = F.log_softmax(t.float() / temperature, dim=-1)
    if top_k is not None:
        return _topk_per_position(lp_s, lp_t, top_k, kind, beta, alpha)
    return divergence_from_logprobs(lp_s, lp_t, kind, beta=beta, alpha=alpha)


def divergence(
    student_logits: Tensor,
    teacher_logits: Tensor,
    kind: Kind = "forward_kl",
    *,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    beta: float = 0.5,
    alpha: float = 0.1,
    top_k: int | None = None,
    chunk_size: int | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    """Divergence `kind` between teacher and student at `temperature`.

    student_logits, teacher_logits: (..., V) (V may differ: extra padded rows are dropped).
    mask: (...) bool, True where the position counts. Returns a scalar, or (...) for "none".
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    s, t = _align_vocab(student_logits, teacher_logits.detach())
    if s.shape[:-1] != t.shape[:-1]:
        raise ValueError(f"student logits {tuple(s.shape)} and teacher logits {tuple(t.shape)} differ in leading dims")
    lead = s.shape[:-1]
    s2, t2 = s.reshape(-1, s.shape[-1]), t.reshape(-1, t.shape[-1])
    args = (kind, temperature, beta, alpha, top_k)
    if chunk_size is None or chunk_size >= s2.shape[0]:
        per_pos = _per_position(s2, t2, *args)
    else:
        if mask is not None:  # skip the work for masked positions entirely
            keep = mask.reshape(-1)
            s2, t2 = s2[keep], t2[keep]
        parts = []
        for i in range(0, s2.shape[0], chunk_size):
            sc, tc = s2[i : i + chunk_size], t2[i : i + chunk_size]
            if torch.is_grad_enabled() and sc.requires_grad:
                parts.append(checkpoint(_per_position, sc, tc, *args, use_reentrant=False))
            else:
                parts.append(_per_position(sc, tc, *args))
        flat = torch.cat(parts) if parts else s2.new_zeros(0, dtype=torch.float32)
        if mask is not None:
            full = flat.new_zeros(keep.shape[0])
            per_pos = full.masked_scatter(keep, flat)
        else:
            per_pos = flat
    return _reduce(per_pos.reshape(lead), mask, reduction)


def sparse_divergence(
    student_logits: Tensor,
    teacher_indices: Tensor,
    teacher_logprobs: Tensor,
    kind: Kind = "forward_kl",
    *,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    beta: float = 0.5,
    alpha: float = 0.1,
    teacher_log_tail: Tensor | None = None,
    teacher_valid: Tensor | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    """Divergence against a teacher known only on its top-k bins (e.g. read from a cache).

    student_logits: (..., V); teacher_indices: (..., k) long; teacher_logprobs: (..., k) teacher
    log-probs at `temperature` (normalised over the full vocabulary). The teacher's remaining
    mass and the student's mass outside those k indices form one tail bucket each.
    teacher_log_tail: (...) the teacher's exact log tail mass, when known (else 1 - sum of the bins).
    teacher_valid: (..., k) bool, the bins that exist (records with fewer than k tokens at some
    positions pad the rest; a padded bin holds no mass on either side and joins no tail).
    """
    lp_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    bins_s = lp_s.gather(-1, teacher_indices.long())
    bins_t = teacher_logprobs.float()
    valid = torch.ones_like(bins_s, dtype=torch.bool) if teacher_valid is None else teacher_valid.bool()
    lp_s_b = torch.cat([bins_s, _log_tail(bins_s, valid)], -1)
    if teacher_log_tail is None:
        tail_t = _log_tail(bins_t, valid)
    else:
        tail_t = teacher_log_tail.float().unsqueeze(-1).clamp(min=_LOG_FLOOR)
    lp_t_b = torch.cat([bins_t, tail_t], -1)
    mask_b = None if teacher_valid is None else torch.cat([valid, torch.ones_like(valid[..., :1])], -1)
    per_pos = divergence_from_logprobs(lp_s_b, lp_t_b, kind, beta=beta, alpha=alpha, bin_mask=mask_b)
    return _reduce(per_pos, mask, reduction)


def forward_kl(student_logits: Tensor, teacher_logits: Tensor, **kw) -> Tensor:
    """KL(teacher || student); see `divergence` for arguments."""
    return divergence(student_logits, teacher_logits, "forward_kl", **kw)


def reverse_kl(student_logits: Tensor, teacher_logits: Tensor, **kw) -> Tensor:
    """KL(student || teacher); see `divergence`."""
    return divergence(student_logits, teacher_logits, "reverse_kl", **kw)


def generalized_jsd(student_logits: Tensor, teacher_logits: Tensor, beta: float = 0.5, **kw) -> Tensor:
    """Generalised Jensen-Shannon divergence JSD(beta) (GKD); see `divergence`."""
    return divergence(student_logits, teacher_logits, "jsd", beta=beta, **kw)


def skew_kl(student_logits: Tensor, teacher_logits: Tensor, alpha: float = 0.1, **kw) -> Tensor:
    """Skew KL: KL(p || alpha p + (1-alpha) q) (DistiLLM); see `divergence`."""
    return divergence(student_logits, teacher_logits, "skew_kl", alpha=alpha, **kw)


def skew_reverse_kl(student_logits: Tensor, teacher_logits: Tensor, alpha: float = 0.1, **kw) -> Tensor:
    """Skew reverse KL: KL(q || alpha q + (1-alpha) p) (DistiLLM); see `divergence`."""
    return divergence(student_logits, teacher_logits, "skew_reverse_kl", alpha=alpha, **kw)


def tvd(student_logits: Tensor, teacher_logits: Tensor, **kw) -> Tensor:
    """Total variation distance; see `divergence`."""
    return divergence(student_logits, teacher_logits, "tvd", **kw)
