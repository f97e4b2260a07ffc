"""Encoder distillation losses: pure functions over tensors, fp32 inside, teacher side detached.

Shapes: hidden states (B, T, D); attention / relation log-probs (B, H, T, T); `mask` (B, T) bool or
0/1 (True = a real token). Every loss returns a scalar; an all-masked batch gives 0, not NaN.
Row-wise KL terms use the shared `distill.losses.divergences` function.

- attention distributions (TinyBERT, Jiao et al. 2020; MiniLM, Wang et al. 2020): `attention_logprobs`
- self-attention relations (MiniLMv2, Wang et al. 2021, eq. 1-3): `relation_logprobs`, `relation_kl`
- sentence embeddings: `embedding_match` (MSE / cosine), `similarity_matrix_loss` (in-batch cosines)
- ranking and parallel data: `pair_dot_scores`, `margins`, `margin_mse` (Hofstätter et al. 2020, eq. 1);
  the parallel-sentence loss of Reimers & Gurevych 2020 is `embedding_match(..., "mse")` twice
- MI-alpha (Poole et al. 2019, eq. 12 "I_alpha"; used as an intermediate objective by Distiller,
  He et al. 2021): `mi_alpha_bound`
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.losses.divergences import divergence_from_logprobs


def _heads(x: Tensor, num_heads: int) -> Tensor:
    """(B, T, D) -> (B, H, T, D / H)."""
    b, t, d = x.shape
    if d % num_heads:
        raise ValueError(f"width {d} is not divisible into {num_heads} heads")
    return x.float().view(b, t, num_heads, d // num_heads).transpose(1, 2)


def _key_mask(mask: Tensor | None, scores: Tensor) -> Tensor:
    if mask is None:
        return scores
    return scores.masked_fill(~mask.bool()[:, None, None, :], -1.0e9)  # finite: no NaN gradients


def attention_logprobs(q: Tensor, k: Tensor, num_heads: int, mask: Tensor | None = None) -> Tensor:
    """log softmax(Q_h K_h^T / sqrt(d_h)) over keys, padded keys excluded. (B, T, D) x2 -> (B, H, T, T)."""
    qh, kh = _heads(q, num_heads), _heads(k, num_heads)
    scores = qh @ kh.transpose(-1, -2) / math.sqrt(qh.shape[-1])
    return F.log_softmax(_key_mask(mask, scores), -1)


def relation_logprobs(x: Tensor, num_heads: int, mask: Tensor | None = None) -> Tensor:
    """Self-relation of one vector kind (queries, keys or values) split into `num_heads` relation
    heads: log softmax(X_h X_h^T / sqrt(d_r)). (B, T, D) -> (B, R, T, T). MiniLMv2 eq. 1."""
    return attention_logprobs(x, x, num_heads, mask)


def row_kl(lp_s: Tensor, lp_t: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean over heads and real query rows of KL(teacher row || student row). (B, H, T, T) x2 -> ()."""
    kl = divergence_from_logprobs(lp_s.float(), lp_t.detach().float(), "forward_kl")  # (B, H, T)
    if mask is None:
        return kl.mean()
    m = mask.bool()[:, None, :].expand_as(kl)
    return (kl * m).sum() / m.sum().clamp(min=1)


def head_mean_logprobs(lp: Tensor) -> Tensor:
    """Average attention distributions over heads (for different head counts). (B, H, T, T) -> (B, 1, T, T)."""
    return torch.logsumexp(lp, 1, keepdim=True) - math.log(lp.shape[1])


def relation_kl(s: Tensor, t: Tensor, num_heads: int, mask: Tensor | None = None) -> Tensor:
    """MiniLMv2 relation transfer for one vector kind: KL between teacher and student relations,
    both split into the same number of relation heads (widths may differ). (B, T, Ds), (B, T, Dt)."""
    return row_kl(relation_logprobs(s, num_heads, mask), relation_logprobs(t.detach(), num_heads, mask), mask)


def masked_mse(h_s: Tensor, h_t: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean squared error over real tokens and features. (B, T, D) x2 -> ()."""
    se = (h_s.float() - h_t.detach().float()).pow(2).mean(-1)  # (B, T)
    if mask is None:
        return se.mean()
    m = mask.float()
    return (se * m).sum() / m.sum().clamp(min=1)


def mean_pool(h: Tensor, mask: Tensor) -> Tensor:
    """Average of token vectors over real tokens. (B, T, D), (B, T) -> (B, D)."""
    m = mask.to(h.dtype).unsqueeze(-1)
    return (h * m).sum(1) / m.sum(1).clamp(min=1)


def embedding_match(e_s: Tensor, e_t: Tensor, kind: str = "cosine") -> Tensor:
    """Per-sentence embedding matching, batch mean: "mse" = mean (e_s - e_t)^2 over features,
    "cosine" = 1 - cos(e_s, e_t). (B, D) x2 -> ()."""
    e_s, e_t = e_s.float(), e_t.detach().float()
    if kind == "mse":
        return (e_s - e_t).pow(2).mean()
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(e_s, e_t, dim=-1)).mean()
    raise ValueError(f"embedding_match: unknown kind {kind!r} (mse, cosine)")


def cosine_matrix(e: Tensor) -> Tensor:
    """In-batch cosine similarities. (B, D) -> (B, B)."""
    e = F.normalize(e.float(), dim=-1)
    return e @ e.t()


def similarity_matrix_loss(e_s: Tensor, e_t: Tensor) -> Tensor:
    """Mean squared difference between the student's and the teacher's in-batch cosine-similarity
    matrices (off-diagonal entries; widths may differ). (B, Ds), (B, Dt) -> ()."""
    b = e_s.shape[0]
    if b < 2:
        return e_s.float().sum() * 0.0
    off = ~torch.eye(b, dtype=torch.bool, device=e_s.device)
    return (cosine_matrix(e_s) - cosine_matrix(e_t.detach()))[off].pow(2).mean()


def pair_dot_scores(q: Tensor, p: Tensor) -> Tensor:
    """Dot products of each query with its own passages. (B, D), (B, P, D) -> (B, P)."""
    return torch.einsum("bd,bpd->bp", q.float(), p.float())


def margins(scores: Tensor) -> Tensor:
    """Score of the positive (column 0) minus each negative's. (B, 1 + K) -> (B, K)."""
    return scores[:, :1] - scores[:, 1:]


def margin_mse(scores: Tensor, target_margins: Tensor) -> Tensor:
    """Margin-MSE (Hofstätter et al. 2020, eq. 1): mean over queries and negatives of
    ((s(q, p) - s(q, n_i)) - (t(q, p) - t(q, n_i)))^2. Student scores (B, 1 + K), positive first;
    teacher margins (B, K), detached. -> ()."""
    return (margins(scores.float()) - target_margins.detach().float()).pow(2).mean()


def mi_alpha_bound(scores: Tensor, alpha: float, log_baseline: Tensor | float = 0.0) -> Tensor:
    """The interpolated mutual-information lower bound I_alpha (Poole et al. 2019, eq. 12) from a
    critic matrix scores[i, j] = f(x_i, y_j), pairs (i, i) drawn jointly, (i, j != i) from the
    marginals. With m(y_j) = mean_k exp f(x_k, y_j) and a baseline a = exp(log_baseline):

        I_alpha = 1 + E_i[f_ii - log(alpha m(y_i) + (1 - alpha) a)]
                    - E_{i != j}[exp(f_ij) / (alpha m(y_j) + (1 - alpha) a)]

    alpha = 1 is close to InfoNCE, alpha = 0 is the TUBA/NWJ bound. (B, B) -> () (to be maximised).
    """
    s = scores.float()
    b = s.shape[0]
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"mi_alpha: alpha must be in [0, 1], got {alpha}")
    log_m = torch.logsumexp(s, 0) - math.log(b)                       # (B,) log m(y_j), over x_k
    lb = torch.as_tensor(log_baseline, dtype=s.dtype, device=s.device).expand(b)
    parts = []
    if alpha > 0:
        parts.append(log_m + math.log(alpha))
    if alpha < 1:
        parts.append(lb + math.log1p(-alpha))
    log_den = torch.logsumexp(torch.stack(parts), 0)                 # (B,) log denominator of y_j
    pos = (s.diagonal() - log_den).mean()
    if b < 2:
        return 1.0 + pos - 1.0
    off = ~torch.eye(b, dtype=torch.bool, device=s.device)
    neg = torch.exp(s - log_den[None, :])[off].mean()
    return 1.0 + pos - neg
