"""Language-model losses that never build the full (batch, seq, vocab) logits.

`hidden_divergence` takes the final hidden states and output-head weights of both models and
computes the logits one chunk of positions at a time: at most a few (chunk, V) blocks in fp32 are
alive, never (B*T, V). The divergence per position is the one of `distill.losses.divergences`
(same kinds, top-k, vocab-padding handling).

Two ways to get the gradients. By default ("fused"), for a summed or averaged loss, each chunk's
gradient with respect to the student's logits is taken right where the chunk is computed, in the
forward pass, and folded at once into the gradients of the hidden states (N, D) and of the head
(V, D); the backward pass only scales them by the incoming gradient. Each logits block is then
computed once: two head matmuls forward and two for the gradients, as many as the dense loss, so
it costs no more time than the dense loss and holds one chunk of logits instead of all of them.
For forward KL, reverse KL, generalized JSD and cross-entropy the chunk's gradient is written in
closed form (`_closed_form_div_grad`, `_closed_form_ce_grad`), in place on a few fp32 blocks;
the other kinds and top-k take it by autograd on the chunk alone.
The other way ("recompute", and always for reduction="none", where each position gets its own
incoming gradient) wraps each chunk in activation checkpointing, which computes the logits of
both models twice. The fused path cannot be differentiated twice.

A model whose logits are not just `head(hidden)` gives its output transform as a `LogitMap`
(Gemma-2/3 soft-capping, Cohere's `logit_scale`, Granite's `logits_scaling`); it is applied to
each chunk's logits, so the chunked losses see the same logits as `model(...).logits`.

`hidden_cross_entropy` is the matching next-token CE. Both return a "sum" by default so the caller
can divide by the number of counted tokens in a whole accumulation window (`token_mean`), which
keeps the per-token normalisation exact under padding and gradient accumulation.
"""
from __future__ import annotations

from dataclasses import dataclass

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from distill.losses.divergences import Kind, Reduction, _align_vocab, _per_position, _reduce


@dataclass(frozen=True)
class LogitMap:
    """What a model does to `head(hidden)` before returning its logits:
    z -> scale * z, then, with `softcap` c, c * tanh(z / c) (Gemma-2, eq. of its `final_logit_softcapping`).
    The identity by default."""
    scale: float = 1.0
    softcap: float | None = None

    @property
    def identity(self) -> bool:
        return self.scale == 1.0 and self.softcap is None

    def __call__(self, z: Tensor) -> Tensor:
        if self.scale != 1.0:
            z = z * self.scale
        if self.softcap is not None:
            z = torch.tanh(z / self.softcap) * self.softcap
        return z

    def backward(self, mapped: Tensor, grad: Tensor) -> Tensor:
        """grad * d map / d z, given `mapped` = map(z) (in place on `grad`): scale * (1 - (mapped / c)^2)."""
        if self.softcap is not None:
            grad = grad.mul_(1.0 - (mapped.to(grad.dtype) / self.softcap) ** 2)
        return grad.mul_(self.scale) if self.scale != 1.0 else grad


IDENTITY = LogitMap()


def head_logits(h: Tensor, w: Tensor, b: Tensor | None = None, logit_map: LogitMap | None = None) -> Tensor:
    """The logits (N, V) of hidden states (N, D) under head (V, D) and the model's output transform."""
    z = F.linear(h, w, b)
    return z if logit_map is None or logit_map.identity else logit_map(z)


@torch.no_grad()
def head_topk(h: Tensor, w: Tensor, b: Tensor | None = None, logit_map: LogitMap | None = None, *, k: int,
              temperature: float = 1.0, chunk_size: int = 1024, tail_floor: float | None = None,
              vocab: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k of the log-softmax at `temperature` of the logits of hidden states `h` (N, D) under head
    (V, D) (its first `vocab` rows when given: a head padded past its tokenizer): (indices (N, k)
    int64, log-probs (N, k) fp32, exact log of the remaining mass (N,) fp32, clamped below at
    `tail_floor` when given), `chunk_size` rows at a time, so that at most one (chunk_size, V) fp32
    block of log-probs exists (the full (N, V) logits never do)."""
    k = min(k, vocab or w.shape[0], w.shape[0])
    idx = torch.empty(h.shape[0], k, dtype=torch.long, device=h.device)
    val = torch.empty(h.shape[0], k, dtype=torch.float32, device=h.device)
    tail = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
    for i in range(0, h.shape[0], chunk_size):
        j = min(i + chunk_size, h.shape[0])
        lp = F.log_softmax(head_logits(h[i:j], w, b, logit_map)[..., :vocab].float() / temperature, dim=-1)
        top = lp.topk(k, dim=-1)
        idx[i:j], val[i:j] = top.indices, top.values
        tail[i:j] = lp.scatter_(-1, top.indices, float("-inf")).logsumexp(-1)  # in place: no second block
    if tail_floor is not None:
        tail.clamp_(min=tail_floor)
    return idx, val, tail


class _FusedHeadLoss(torch.autograd.Function):
    """The sum over rows of a per-row loss of the student logits `hs @ ws.T + bs`, its gradients
    computed chunk by chunk in the forward pass (see the module docstring).
    `chunk_grad(h, ws, bs, start, stop) -> (loss summed over the chunk's rows, d loss / d logits)`
    computes the chunk's logits itself and brings what else it needs (the teacher's logits of those
    rows, labels). The gradients accumulate in the dtype of the tensors they belong to, as
    autograd's own accumulation over chunks would."""

    @staticmethod
    def forward(ctx, hs, ws, bs, chunk_grad, chunk_size):
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        total = torch.zeros((), dtype=torch.float32, device=hs.device)
        grad_h = torch.zeros_like(hs) if need_h else None
        grad_w = torch.zeros_like(ws) if need_w else None
        grad_b = torch.zeros_like(bs) if need_b else None
        for i in range(0, hs.shape[0], chunk_size):
            h = hs[i:i + chunk_size]
            loss, g = chunk_grad(h, ws, bs, i, i + h.shape[0])
            total += loss
            g = g.to(ws.dtype)
            if grad_h is not None:
                grad_h[i:i + chunk_size] = g @ ws
            if grad_w is not None:
                grad_w.addmm_(g.t(), h)
            if grad_b is not None:
                grad_b += g.sum(0)
            del g
        ctx.grads = (grad_h, grad_w, grad_b)
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        grads = ctx.grads
        del ctx.grads
        scale = None if bool(grad_out == 1) else grad_out
        out = tuple(None if g is None else (g if scale is None else g.mul_(scale.to(g.dtype))) for g in grads)
        return (*out, None, None)


def _fused_sum(hs: Tensor, ws: Tensor, bs: Tensor | None, chunk_grad, chunk_size: int) -> Tensor:
    return _FusedHeadLoss.apply(hs, ws, bs, chunk_grad, chunk_size)


def _autograd_chunk(row_loss, logit_map: LogitMap | None):
    """A `chunk_grad` for any per-row loss `row_loss(logits, start, stop) -> (stop - start,)` of the
    mapped logits: the chunk's gradient by autograd on that chunk alone."""
    def chunk_grad(h: Tensor, ws: Tensor, bs: Tensor | None, i: int, j: int) -> tuple[Tensor, Tensor]:
        z = F.linear(h, ws, bs).requires_grad_()
        with torch.enable_grad():
            loss = row_loss(z if logit_map is None or logit_map.identity else logit_map(z), i, j).float().sum()
            (g,) = torch.autograd.grad(loss, z)
        return loss.detach(), g
    return chunk_grad


def chunked_rows_sum(hidden: Tensor, head: Tensor, bias: Tensor | None, row_loss, *,
                     logit_map: LogitMap | None = None, chunk_size: int = 1024) -> Tensor:
    """sum_n row_loss(logit_map(hidden @ head.T + bias)[rows], start, stop)[n] over rows of hidden
    states (N, D), `chunk_size` rows' logits at a time; `row_loss(logits, start, stop)` returns the
    (stop - start,) losses of those rows and fetches what else it needs (teacher targets of the
    rows) itself. With gradients, the fused path: each chunk's gradient by autograd on the chunk,
    in the forward pass (see the module docstring)."""
    if torch.is_grad_enabled() and (hidden.requires_grad or head.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        return _fused_sum(hidden, head, bias, _autograd_chunk(row_loss, logit_map), chunk_size)
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for i in range(0, hidden.shape[0], chunk_size):
        h = hidden[i:i + chunk_size]
        total = total + row_loss(head_logits(h, head, bias, logit_map), i, i + h.shape[0]).float().sum()
    return total


def _log_softmax_(x: Tensor, temperature: float) -> Tensor:
    """log_softmax(x / temperature) in fp32, in place where `x` is already an fp32 temporary."""
    x = x.float() if x.dtype != torch.float32 else x
    if temperature != 1.0:
        x = x / temperature
    return x.sub_(x.logsumexp(-1, keepdim=True))


def _closed_form_div_grad(zs: Tensor, zt: Tensor, kind: Kind, temperature: float, beta: float,
                          logit_map: LogitMap | None) -> tuple[Tensor, Tensor]:
    """Forward KL, reverse KL and generalized JSD of (n, V) student logits (before their map) and
    teacher logits, summed over rows, and their gradient with respect to `zs`, in closed form.
    With p = softmax(z / T), the gradient of a function of log p with respect to z is
    (g - p * sum(g)) / T for g its gradient with respect to log p, which gives:
    forward KL (p_s - p_t) / T; reverse KL p_s * (log p_s - log p_t - KL(s||t)) / T; JSD with
    m = beta p_t + (1 - beta) p_s: (1 - beta) p_s * (log p_s - log m - KL(s||m)) / T, since
    d JSD / d p_s = (1 - beta) log(p_s / m). Each row's log-probs are floored as in
    `divergence_from_logprobs`. A handful of (n, V) fp32 blocks, where autograd through the same
    expression keeps a dozen."""
    from distill.losses.divergences import _LOG_FLOOR

    v = min(zs.shape[-1], zt.shape[-1])
    z = zs[:, :v]
    mapped = z if logit_map is None or logit_map.identity else logit_map(z)
    if mapped is z:  # `zs` is this chunk's own temporary: its log-probs may take its place
        lp_s, mapped = _log_softmax_(z, temperature), None
    else:  # the mapped logits are kept for the map's derivative
        lp_s = _log_softmax_(mapped.clone() if mapped.dtype == torch.float32 and temperature == 1.0 else mapped,
                             temperature)
    lp_t = _log_softmax_(zt[:, :v], temperature)
    del zt
    lp_s.clamp_(min=_LOG_FLOOR)
    lp_t.clamp_(min=_LOG_FLOOR)
    if kind == "jsd" and beta == 0.0:
        kind = "forward_kl"
    elif kind == "jsd" and beta == 1.0:
        kind = "reverse_kl"
    if kind == "forward_kl":
        p_t = lp_t.exp()
        per = (lp_t.sub_(lp_s).mul_(p_t)).sum(-1)
        g = lp_s.exp_().sub_(p_t)
    elif kind == "reverse_kl":
        p_s = lp_s.exp()
        d = lp_s.sub_(lp_t)
        per = (p_s * d).sum(-1)
        g = d.sub_(per[:, None]).mul_(p_s)
    else:
        lp_m = torch.logaddexp(lp_t + math.log(beta), lp_s + math.log1p(-beta))
        kl_t = (lp_t.exp() * lp_t.sub_(lp_m)).sum(-1)
        del lp_t
        p_s = lp_s.exp()
        d = lp_s.sub_(lp_m)
        del lp_m
        kl_s = (p_s * d).sum(-1)
        per = beta * kl_t + (1.0 - beta) * kl_s
        g = d.sub_(kl_s[:, None]).mul_(p_s).mul_(1.0 - beta)
    if temperature != 1.0:
        g.div_(temperature)
    if mapped is not None:
        g = logit_map.backward(mapped, g)
    if v < zs.shape[-1]:  # padded student rows: no gradient
        g = F.pad(g, (0, zs.shape[-1] - v))
    return per.sum(), g


CLOSED_FORM_KINDS = ("forward_kl", "reverse_kl", "jsd")


def _closed_form_ce_grad(z: Tensor, y: Tensor, logit_map: LogitMap | None) -> tuple[Tensor, Tensor]:
    """Cross-entropy of (n, V) logits (before their map) against labels (n,), summed, and its
    gradient with respect to `z`: softmax(map(z)) - onehot(y), through the map's derivative."""
    mapped = None if logit_map is None or logit_map.identity else logit_map(z)
    lp = _log_softmax_(z if mapped is None else mapped.float() if mapped.dtype != torch.float32 else mapped.clone(), 1.0)
    rows = torch.arange(y.shape[0], device=y.device)
    loss = -lp[rows, y].sum()
    g = lp.exp_()
    g[rows, y] -= 1.0
    if mapped is not None:
        g = logit_map.backward(mapped, g)
    return loss, g


def _count_reduce(total: Tensor, n_rows: int, reduction: Reduction) -> Tensor:
    """The fused path's "sum" or "mean" over the counted rows (as `_reduce` over the masked positions)."""
    return total if reduction == "sum" else total / max(n_rows, 1)


def _teacher_logits(ht: Tensor, wt: Tensor, bt: Tensor | None, ft: LogitMap | None, device) -> Tensor:
    with torch.no_grad():  # a teacher placed by a device_map may hold its head on another device
        return head_logits(ht.to(wt.device), wt, bt, ft).to(device)


def _div_chunk(hs: Tensor, ws: Tensor, bs: Tensor | None, ht: Tensor, wt: Tensor, bt: Tensor | None,
               kind: Kind, temperature: float, beta: float, alpha: float, top_k: int | None,
               fs: LogitMap | None, ft: LogitMap | None) -> Tensor:
    zs, zt = _align_vocab(head_logits(hs, ws, bs, fs), _teacher_logits(ht, wt, bt, ft, hs.device))
    return _per_position(zs, zt, kind, temperature, beta, alpha, top_k)


def _ce_chunk(h: Tensor, w: Tensor, b: Tensor | None, y: Tensor, f: LogitMap | None) -> Tensor:
    return F.cross_entropy(head_logits(h, w, b, f).float(), y, reduction="none")


def _flat_selected(x: Tensor, keep: Tensor | None) -> Tensor:
    x = x.reshape(-1, x.shape[-1])
    return x if keep is None else x[keep]


def hidden_divergence(
    student_hidden: Tensor,
    student_head: Tensor,
    teacher_hidden: Tensor,
    teacher_head: Tensor,
    kind: Kind = "forward_kl",
    *,
    student_bias: Tensor | None = None,
    teacher_bias: Tensor | None = None,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    beta: float = 0.5,
    alpha: float = 0.1,
    top_k: int | None = None,
    chunk_size: int = 1024,
    reduction: Reduction = "sum",
    student_logit_map: LogitMap | None = None,
    teacher_logit_map: LogitMap | None = None,
    fused: bool = True,
) -> Tensor:
    """Divergence between teacher and student next-token distributions from hidden states.

    student_hidden: (..., Ds); student_head: (Vs, Ds); teacher_hidden: (..., Dt); teacher_head:
    (Vt, Dt) (Vs != Vt: the extra padded rows are dropped). mask: (...) bool. Masked positions are
    skipped before any logits are computed. `*_logit_map`: each model's output transform.
    fused: the gradients in the forward pass (the default; "sum"/"mean" only), else per-chunk
    activation checkpointing (see the module docstring).
    Returns a scalar, or (...) for reduction="none".
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    lead = student_hidden.shape[:-1]
    if teacher_hidden.shape[:-1] != lead:
        raise ValueError(f"student hidden {tuple(student_hidden.shape)} and teacher hidden "
                         f"{tuple(teacher_hidden.shape)} differ in leading dims")
    keep = mask.reshape(-1) if mask is not None else None
    hs, ht = _flat_selected(student_hidden, keep), _flat_selected(teacher_hidden.detach(), keep)
    wt = teacher_head.detach()
    bt = teacher_bias.detach() if teacher_bias is not None else None
    grad = torch.is_grad_enabled() and (hs.requires_grad or student_head.requires_grad
                                        or (student_bias is not None and student_bias.requires_grad))
    if grad and fused and reduction != "none":
        if kind in CLOSED_FORM_KINDS and top_k is None:
            def chunk_grad(h: Tensor, ws: Tensor, bs: Tensor | None, i: int, j: int) -> tuple[Tensor, Tensor]:
                with torch.no_grad():
                    return _closed_form_div_grad(F.linear(h, ws, bs),
                                                 _teacher_logits(ht[i:j], wt, bt, teacher_logit_map, h.device),
                                                 kind, temperature, beta, student_logit_map)
        else:
            def row_loss(zs: Tensor, i: int, j: int) -> Tensor:
                a, b = _align_vocab(zs, _teacher_logits(ht[i:j], wt, bt, teacher_logit_map, zs.device))
                return _per_position(a, b, kind, temperature, beta, alpha, top_k)

            chunk_grad = _autograd_chunk(row_loss, student_logit_map)
        total = _fused_sum(hs, student_head, student_bias, chunk_grad, chunk_size)
        return _count_reduce(total, hs.shape[0], reduction)
    parts = []
    for i in range(0, hs.shape[0], chunk_size):
        args = (hs[i:i + chunk_size], student_head, student_bias, ht[i:i + chunk_size], wt, bt,
                kind, temperature, beta, alpha, top_k, student_logit_map, teacher_logit_map)
        if grad:
            parts.append(checkpoint(_div_chunk, *args, use_reentrant=False))
        else:
            parts.append(_div_chunk(*args))
    return _scatter_reduce(parts, hs, keep, lead, mask, reduction)


def hidden_cross_entropy(
    hidden: Tensor,
    head: Tensor,
    labels: Tensor,
    *,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    chunk_size: int = 1024,
    reduction: Reduction = "sum",
    logit_map: LogitMap | None = None,
    fused: bool = True,
) -> Tensor:
    """Next-token cross-entropy from hidden states (..., D), head (V, D) and labels (...) already
    aligned with positions (labels[t] is the token after position t; `ignore_index` = not counted).
    `logit_map`: the model's output transform. `fused`: as for `hidden_divergence`.
    """
    mask = labels != ignore_index
    keep = mask.reshape(-1)
    h = _flat_selected(hidden, keep)
    y = labels.reshape(-1)[keep]
    grad = torch.is_grad_enabled() and (h.requires_grad or head.requires_grad
                                        or (bias is not None and bias.requires_grad))
    if grad and fused and reduction != "none":
        def chunk_grad(hc: Tensor, w: Tensor, b: Tensor | None, i: int, j: int) -> tuple[Tensor, Tensor]:
            with torch.no_grad():
                return _closed_form_ce_grad(F.linear(hc, w, b), y[i:j], logit_map)

        total = _fused_sum(h, head, bias, chunk_grad, chunk_size)
        return _count_reduce(total, h.shape[0], reduction)
    parts = []
    for i in range(0, h.shape[0], chunk_size):
        args = (h[i:i + chunk_size], head, bias, y[i:i + chunk_size], logit_map)
        if grad:
            parts.append(checkpoint(_ce_chunk, *args, use_reentrant=False))
        else:
            parts.append(_ce_chunk(*args))
    return _scatter_reduce(parts, h, keep, labels.shape, mask, reduction)


def _scatter_reduce(parts: list[Tensor], h: Tensor, keep: Tensor | None, lead, mask: Tensor | None,
                    reduction: Reduction) -> Tensor:
    flat = torch.cat(parts) if parts else h.new_zeros(0, dtype=torch.float32)
    if keep is not None:
        flat = flat.new_zeros(keep.shape[0]).masked_scatter(keep, flat)
    return _reduce(flat.reshape(lead), mask, reduction)


def _token_logprob_chunk(h: Tensor, w: Tensor, b: Tensor | None, tok: Tensor, f: LogitMap | None,
                         vocab: int | None) -> Tensor:
    z = head_logits(h, w, b, f)[..., :vocab].float()
    return z.gather(-1, tok[:, None])[:, 0] - z.logsumexp(-1)


def hidden_token_logprobs(hidden: Tensor, head: Tensor, tokens: Tensor, *, bias: Tensor | None = None,
                          vocab: int | None = None, chunk_size: int = 1024,
                          logit_map: LogitMap | None = None) -> Tensor:
    """log p(tokens[n] | position n) (N,) from hidden states (N, D) and head (V, D), the softmax over
    the first `vocab` rows of the head (a vocabulary padded past the tokenizer's); (chunk, V)
    logits at a time, checkpointed when gradients flow."""
    parts = []
    grad = torch.is_grad_enabled() and (hidden.requires_grad or head.requires_grad)
    for i in range(0, hidden.shape[0], chunk_size):
        args = (hidden[i:i + chunk_size], head, bias, tokens[i:i + chunk_size], logit_map, vocab)
        parts.append(checkpoint(_token_logprob_chunk, *args, use_reentrant=False) if grad
                     else _token_logprob_chunk(*args))
    return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)


def _paired_chunk(fn, hs: Tensor, ws: Tensor, bs: Tensor | None, fs: LogitMap | None, vs: int | None,
                  ht: Tensor, wt: Tensor, bt: Tensor | None, ft: LogitMap | None, vt: int | None) -> Tensor:
    with torch.no_grad():
        zt = head_logits(ht.to(wt.device), wt, bt, ft)[..., :vt].float().to(hs.device)
    return fn(head_logits(hs, ws, bs, fs)[..., :vs].float(), zt)


def paired_rows(fn, student_hidden: Tensor, student_head: tuple, teacher_hidden: Tensor, teacher_head: tuple, *,
                student_vocab: int | None = None, teacher_vocab: int | None = None,
                chunk_size: int = 1024) -> Tensor:
    """`fn(z_student (n, Vs), z_teacher (n, Vt)) -> (n,)` over rows of hidden states (N, Ds) / (N, Dt)
    that correspond one to one (the two vocabularies may differ), (chunk, V) logits at a time,
    checkpointed when gradients flow. `*_head`: (weight, bias or None, LogitMap or None). The teacher
    side is computed without gradients."""
    ws, bs, fs = student_head
    wt, bt, ft = (x.detach() if isinstance(x, Tensor) else x for x in teacher_head)
    ht = teacher_hidden.detach()
    grad = torch.is_grad_enabled() and (student_hidden.requires_grad or ws.requires_grad)
    parts = []
    for i in range(0, student_hidden.shape[0], chunk_size):
        args = (fn, student_hidden[i:i + chunk_size], ws, bs, fs, student_vocab, ht[i:i + chunk_size], wt, bt, ft,
                teacher_vocab)
        parts.append(checkpoint(_paired_chunk, *args, use_reentrant=False) if grad else _paired_chunk(*args))
    return torch.cat(parts) if parts else student_hidden.new_zeros(0, dtype=torch.float32)


def _student_chunk(fn, hs: Tensor, ws: Tensor, bs: Tensor | None, fs: LogitMap | None, vs: int | None,
                   *targets: Tensor) -> Tensor:
    return fn(head_logits(hs, ws, bs, fs)[..., :vs].float(), *targets)


def student_rows(fn, student_hidden: Tensor, student_head: tuple, *targets: Tensor, student_vocab: int | None = None,
                 chunk_size: int = 1024) -> Tensor:
    """`fn(z_student (n, Vs), *targets[rows]) -> (n,)` over rows of hidden states (N, D), each target
    a tensor of N rows (what a cached or served teacher gave for them), (chunk, V) logits at a time,
    checkpointed when gradients flow. `student_head`: (weight, bias or None, LogitMap or None)."""
    ws, bs, fs = student_head
    grad = torch.is_grad_enabled() and (student_hidden.requires_grad or ws.requires_grad)
    parts = []
    for i in range(0, student_hidden.shape[0], chunk_size):
        args = (fn, student_hidden[i:i + chunk_size], ws, bs, fs, student_vocab,
                *(t[i:i + chunk_size].detach() for t in targets))
        parts.append(checkpoint(_student_chunk, *args, use_reentrant=False) if grad else _student_chunk(*args))
    return torch.cat(parts) if parts else student_hidden.new_zeros(0, dtype=torch.float32)


def token_mean(total: Tensor, num_tokens: Tensor | float) -> Tensor:
    """`total` (a "sum" loss) divided by the number of counted tokens (at least 1)."""
    n = torch.as_tensor(num_tokens, dtype=torch.float32, device=total.device)
    return total / n.clamp(min=1.0)
