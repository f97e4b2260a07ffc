"""Chunked-from-hidden-states losses against the dense divergences: values and gradients."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distill.losses import divergence
from distill.losses.divergences import DIVERGENCES
from distill.losses.lm import hidden_cross_entropy, hidden_divergence, token_mean

B, T, D, V = 2, 7, 8, 50


def _setup(seed=0, vs=V, vt=V):
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(B, T, D, generator=g, requires_grad=True)
    ws = torch.randn(vs, D, generator=g, requires_grad=True)
    ht = torch.randn(B, T, D + 3, generator=g)
    wt = torch.randn(vt, D + 3, generator=g)
    mask = torch.rand(B, T, generator=g) > 0.3
    return hs, ws, ht, wt, mask


@pytest.mark.parametrize("kind", DIVERGENCES)
@pytest.mark.parametrize("chunk", [1, 3, 100])
def test_hidden_chunked_equals_dense(kind, chunk):
    hs, ws, ht, wt, mask = _setup()
    kw = dict(temperature=2.0, mask=mask, beta=0.3, alpha=0.2)
    dense = divergence(hs @ ws.T, ht @ wt.T, kind, reduction="sum", **kw)
    g_dense = torch.autograd.grad(dense, (hs, ws))
    chunked = hidden_divergence(hs, ws, ht, wt, kind, chunk_size=chunk, **kw)
    g_chunk = torch.autograd.grad(chunked, (hs, ws))
    torch.testing.assert_close(chunked, dense, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_chunk, g_dense):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_topk_full_vocab_equals_dense(kind):
    hs, ws, ht, wt, mask = _setup(1)
    dense = hidden_divergence(hs, ws, ht, wt, kind, mask=mask, chunk_size=4)
    topk = hidden_divergence(hs, ws, ht, wt, kind, mask=mask, chunk_size=4, top_k=V)
    torch.testing.assert_close(topk, dense, rtol=1e-4, atol=1e-5)
    g1 = torch.autograd.grad(dense, hs)[0]
    g2 = torch.autograd.grad(topk, hs)[0]
    torch.testing.assert_close(g1, g2, rtol=1e-3, atol=1e-5)


def test_topk_small_k_is_finite_and_bounded():
    hs, ws, ht, wt, mask = _setup(2)
    d = hidden_divergence(hs, ws, ht, wt, "forward_kl", mask=mask, top_k=3, chunk_size=5)
    assert torch.isfinite(d) and d >= 0


def test_jsd_beta_limits():
    hs, ws, ht, wt, mask = _setup(3)
    fkl = hidden_divergence(hs, ws, ht, wt, "forward_kl", mask=mask)
    rkl = hidden_divergence(hs, ws, ht, wt, "reverse_kl", mask=mask)
    torch.testing.assert_close(hidden_divergence(hs, ws, ht, wt, "jsd", beta=0.0, mask=mask), fkl)
    torch.testing.assert_close(hidden_divergence(hs, ws, ht, wt, "jsd", beta=1.0, mask=mask), rkl)
    # inside (0, 1) JSD is bounded by the (beta-weighted) entropy bound and is symmetric at 0.5 when swapped
    mid = hidden_divergence(hs, ws, ht, wt, "jsd", beta=0.5, mask=mask)
    assert 0 < mid < min(fkl, rkl)
    zs, zt = hs @ ws.T, ht @ wt.T
    torch.testing.assert_close(divergence(zs, zt, "jsd", beta=0.5), divergence(zt, zs, "jsd", beta=0.5))


def test_kl_to_itself_is_zero():
    hs, ws, _, _, mask = _setup(4)
    d = hidden_divergence(hs, ws, hs.detach(), ws.detach(), "jsd", mask=mask)
    assert abs(float(d.detach())) < 1e-5


def test_vocab_padding_rows_are_dropped():
    """A student whose vocabulary is padded with extra rows equals the unpadded one on the shared rows."""
    hs, ws, ht, wt, mask = _setup(5)
    pad = torch.randn(14, D) * 5
    ws_pad = torch.cat([ws.detach(), pad]).requires_grad_(True)
    for kind in ("forward_kl", "reverse_kl", "jsd"):
        ref = hidden_divergence(hs, ws, ht, wt, kind, mask=mask)
        padded = hidden_divergence(hs, ws_pad, ht, wt, kind, mask=mask)
        torch.testing.assert_close(padded, ref)
        g = torch.autograd.grad(padded, ws_pad)[0]
        assert torch.all(g[V:] == 0)  # padded rows take no gradient
    # and the other way round: a padded teacher
    wt_pad = torch.cat([wt, torch.randn(6, D + 3)])
    torch.testing.assert_close(hidden_divergence(hs, ws, ht, wt_pad, mask=mask), hidden_divergence(hs, ws, ht, wt, mask=mask))


def test_hidden_cross_entropy_matches_f_cross_entropy():
    hs, ws, _, _, mask = _setup(6)
    y = torch.randint(0, V, (B, T)).masked_fill(~mask, -100)
    ref = F.cross_entropy((hs @ ws.T).reshape(-1, V), y.reshape(-1), reduction="sum", ignore_index=-100)
    got = hidden_cross_entropy(hs, ws, y, chunk_size=3)
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(torch.autograd.grad(got, ws)[0], torch.autograd.grad(ref, ws)[0])


def test_all_masked_is_zero_not_nan():
    hs, ws, ht, wt, _ = _setup(7)
    none = torch.zeros(B, T, dtype=torch.bool)
    assert float(hidden_divergence(hs, ws, ht, wt, mask=none)) == 0.0
    assert float(hidden_divergence(hs, ws, ht, wt, mask=none, reduction="mean")) == 0.0
    y = torch.full((B, T), -100)
    assert float(token_mean(hidden_cross_entropy(hs, ws, y), 0)) == 0.0


@pytest.mark.parametrize("kind", ["forward_kl", "jsd", "tvd"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("top_k", [None, 5])
@pytest.mark.parametrize("temperature", [1.0, 1.5])
def test_fused_gradients_equal_dense_autograd_with_bias_map_and_scaled_output(kind, reduction, top_k, temperature):
    """The fused path takes its gradients in the forward pass: they must be autograd's of the dense
    loss on `logit_map(h @ W.T + b)`, also when the loss is scaled after it and accumulated twice."""
    from distill.losses.lm import LogitMap

    hs, ws, ht, wt, mask = _setup(8, vs=V + 3)
    bs = torch.randn(V + 3, requires_grad=True)
    f = LogitMap(scale=0.8, softcap=4.0)
    kw = dict(temperature=temperature, mask=mask, top_k=top_k, reduction=reduction)
    dense = divergence(f(F.linear(hs, ws, bs)), ht @ wt.T, kind, **kw)
    ref = torch.autograd.grad(-3.0 * dense, (hs, ws, bs))
    got = hidden_divergence(hs, ws, ht, wt, kind, student_bias=bs, student_logit_map=f, chunk_size=4, **kw)
    torch.testing.assert_close(got, dense, rtol=1e-5, atol=1e-6)
    (-3.0 * got).backward()
    for p, r in zip((hs, ws, bs), ref):
        torch.testing.assert_close(p.grad, r, rtol=1e-4, atol=1e-6)
    # a second accumulation adds, as autograd's does
    (-3.0 * hidden_divergence(hs, ws, ht, wt, kind, student_bias=bs, student_logit_map=f, chunk_size=4,
                              **kw)).backward()
    torch.testing.assert_close(ws.grad, 2 * ref[1], rtol=1e-4, atol=1e-6)
    assert torch.all(ws.grad[V:] == 0) and torch.all(bs.grad[V:] == 0)  # padded rows take no gradient


def test_fused_and_recompute_agree_and_none_reduction_recomputes():
    hs, ws, ht, wt, mask = _setup(9)
    a = hidden_divergence(hs, ws, ht, wt, "jsd", mask=mask, chunk_size=3, fused=True)
    ga = torch.autograd.grad(a, (hs, ws))
    b = hidden_divergence(hs, ws, ht, wt, "jsd", mask=mask, chunk_size=3, fused=False)
    gb = torch.autograd.grad(b, (hs, ws))
    torch.testing.assert_close(a, b)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)
    # reduction="none": every position has its own incoming gradient, which the fused path cannot take
    w = torch.randn(B, T)
    per = hidden_divergence(hs, ws, ht, wt, "jsd", mask=mask, chunk_size=3, reduction="none")
    dense = divergence(hs @ ws.T, ht @ wt.T, "jsd", mask=mask, reduction="none")
    torch.testing.assert_close(torch.autograd.grad((per * w).sum(), hs)[0],
                               torch.autograd.grad((dense * w).sum(), hs)[0], rtol=1e-4, atol=1e-6)


def test_fused_frozen_head_and_double_backward():
    hs, ws, ht, wt, mask = _setup(10)
    frozen = ws.detach()
    loss = hidden_divergence(hs, frozen, ht, wt, mask=mask, chunk_size=4)
    (g,) = torch.autograd.grad(loss, hs)
    (ref,) = torch.autograd.grad(divergence(hs @ frozen.T, ht @ wt.T, mask=mask, reduction="sum"), hs)
    torch.testing.assert_close(g, ref, rtol=1e-4, atol=1e-6)
    loss = hidden_divergence(hs, ws, ht, wt, mask=mask, chunk_size=4)
    (g,) = torch.autograd.grad(loss, hs, create_graph=True)
    with pytest.raises(RuntimeError):  # the fused gradients are not themselves differentiable
        g.sum().backward()


def test_fused_bf16_close_to_fp32():
    hs, ws, ht, wt, mask = _setup(11)
    h16, w16 = hs.detach().bfloat16().requires_grad_(), ws.detach().bfloat16().requires_grad_()
    lo = hidden_divergence(h16, w16, ht.bfloat16(), wt.bfloat16(), mask=mask, chunk_size=4, reduction="mean")
    hi = hidden_divergence(hs, ws, ht, wt, mask=mask, chunk_size=4, reduction="mean")
    assert lo.dtype == torch.float32
    torch.testing.assert_close(lo, hi, rtol=5e-2, atol=5e-3)
    lo.backward()
    hi.backward()
    assert w16.grad.dtype == torch.bfloat16
    cos = F.cosine_similarity(w16.grad.float().flatten(), ws.grad.flatten(), dim=0)
    assert cos > 0.98


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_fused_cross_entropy_with_bias_and_map(reduction):
    from distill.losses.lm import LogitMap

    hs, ws, _, _, mask = _setup(12)
    bs = torch.randn(V, requires_grad=True)
    f = LogitMap(softcap=5.0)
    y = torch.randint(0, V, (B, T)).masked_fill(~mask, -100)
    ref = F.cross_entropy(f(F.linear(hs, ws, bs)).reshape(-1, V), y.reshape(-1), reduction=reduction)
    got = hidden_cross_entropy(hs, ws, y, bias=bs, logit_map=f, chunk_size=3, reduction=reduction)
    torch.testing.assert_close(got, ref)
    for a, b in zip(torch.autograd.grad(2 * got, (hs, ws, bs)), torch.autograd.grad(2 * ref, (hs, ws, bs))):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
