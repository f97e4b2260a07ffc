"""FIRST's loss against a by-hand computation, and its limits."""
from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("transformers")
from distill.families.llm.first import first_loss  # noqa: E402


def test_first_loss_by_hand():
    zt = torch.tensor([[3.0, 1.0, 0.0, -1.0, 2.0]])
    zs = torch.tensor([[0.5, 0.0, 1.0, -2.0, 0.3]])
    k, tau = 2, 1.5
    # teacher top-2: tokens 0 (3.0) and 4 (2.0); calibrated p~ = softmax([3, 2] / 1.5)
    e0, e4 = math.exp(3 / tau), math.exp(2 / tau)
    p0, p4 = e0 / (e0 + e4), e4 / (e0 + e4)
    lse = math.log(sum(math.exp(v) for v in zs[0].tolist()))
    q0, q4 = zs[0, 0].item() - lse, zs[0, 4].item() - lse
    want = p0 * (math.log(p0) - q0) + p4 * (math.log(p4) - q4)
    assert first_loss(zs, zt, k, tau).item() == pytest.approx(want, rel=1e-6)


def test_first_loss_zero_only_at_the_calibrated_target_and_k_v_is_forward_kl():
    torch.manual_seed(0)
    zt = torch.randn(4, 7)
    # a student that puts softmax(z_topk / tau) on the top-k and (almost) nothing elsewhere
    k, tau = 3, 2.0
    top = zt.topk(k, -1)
    zs = torch.full_like(zt, -60.0).scatter(-1, top.indices, top.values / tau)
    assert first_loss(zs, zt, k, tau).abs().max() < 1e-5
    assert (first_loss(torch.randn(4, 7), zt, k, tau) > 0).all()
    # k = V, tau = 1: the plain forward KL(p || q)
    zs = torch.randn(4, 7)
    p, lq = zt.softmax(-1), zs.log_softmax(-1)
    kl = (p * (p.log() - lq)).sum(-1)
    assert torch.allclose(first_loss(zs, zt, 7, 1.0), kl, atol=1e-6)


def test_chunked_first_gradients_equal_dense_autograd():
    """The method's chunked loss (fused gradients through `chunked_rows_sum`) against autograd of
    `first_loss` on the full logits."""
    from distill.losses.lm import LogitMap, chunked_rows_sum, head_logits

    g = torch.Generator().manual_seed(3)
    hs = torch.randn(11, 6, generator=g, requires_grad=True)
    ws = torch.randn(23, 6, generator=g, requires_grad=True)
    bs = torch.randn(23, generator=g, requires_grad=True)
    zt = torch.randn(11, 20, generator=g)
    f = LogitMap(softcap=3.0)
    dense = first_loss(head_logits(hs, ws, bs, f), zt, 4, 1.5).sum()
    ref = torch.autograd.grad(dense, (hs, ws, bs))
    got = chunked_rows_sum(hs, ws, bs, lambda z, i, j: first_loss(z, zt[i:j], 4, 1.5), logit_map=f, chunk_size=4)
    torch.testing.assert_close(got, dense)
    for a, b in zip(torch.autograd.grad(got, (hs, ws, bs)), ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    with torch.no_grad():  # and without gradients, the plain chunk loop
        torch.testing.assert_close(chunked_rows_sum(hs, ws, bs, lambda z, i, j: first_loss(z, zt[i:j], 4, 1.5),
                                                    logit_map=f, chunk_size=4), dense.detach())
