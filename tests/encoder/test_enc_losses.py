"""Encoder losses against hand computations."""
import math

import numpy as np
import torch
import torch.nn.functional as F

from distill.families.encoder.losses import (attention_logprobs, embedding_match, mi_alpha_bound, relation_kl,
                                             row_kl, similarity_matrix_loss)


def _np_softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def test_minilm_relation_matches_hand_computation():
    torch.manual_seed(0)
    b, t, ds, dt, r = 2, 5, 8, 12, 2
    s, te = torch.randn(b, t, ds), torch.randn(b, t, dt)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    got = relation_kl(s, te, r, mask).item()
    total, count = 0.0, 0
    for bi in range(b):
        n = int(mask[bi].sum())
        for h in range(r):
            xs = s[bi, :n, h * ds // r:(h + 1) * ds // r].numpy().astype(np.float64)
            xt = te[bi, :n, h * dt // r:(h + 1) * dt // r].numpy().astype(np.float64)
            ps = _np_softmax(xs @ xs.T / math.sqrt(ds // r))
            pt = _np_softmax(xt @ xt.T / math.sqrt(dt // r))
            total += (pt * (np.log(pt) - np.log(ps))).sum()  # sum over rows and keys
            count += n
    assert abs(got - total / count) < 1e-5


def test_attention_self_kl_is_zero_and_masked_keys_get_no_mass():
    torch.manual_seed(1)
    q, k = torch.randn(3, 6, 8), torch.randn(3, 6, 8)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4])
    lp = attention_logprobs(q, k, 2, mask)
    assert lp.exp()[2, :, :, 2:].max() == 0
    assert torch.allclose(lp.exp().sum(-1), torch.ones(3, 2, 6))
    assert row_kl(lp, lp, mask).item() == 0.0
    assert row_kl(lp, lp, torch.zeros_like(mask)).item() == 0.0  # all masked: 0, not NaN


def test_embedding_terms():
    torch.manual_seed(2)
    e_s, e_t = torch.randn(4, 6), torch.randn(4, 6)
    assert torch.isclose(embedding_match(e_s, e_t, "mse"), F.mse_loss(e_s, e_t))
    cos = (1 - (F.normalize(e_s, dim=1) * F.normalize(e_t, dim=1)).sum(1)).mean()
    assert torch.isclose(embedding_match(e_s, e_t, "cosine"), cos, atol=1e-6)
    assert embedding_match(e_t, e_t, "cosine").abs() < 1e-6
    # similarity matrix: scale invariant, width free, hand computed off-diagonal MSE
    assert similarity_matrix_loss(3.0 * e_t, e_t).abs() < 1e-10
    e_w = torch.randn(4, 10)
    cs, ct = F.normalize(e_s, dim=1) @ F.normalize(e_s, dim=1).T, F.normalize(e_w, dim=1) @ F.normalize(e_w, dim=1).T
    off = ~torch.eye(4, dtype=torch.bool)
    assert torch.isclose(similarity_matrix_loss(e_s, e_w), (cs - ct)[off].pow(2).mean(), atol=1e-6)


def test_mi_alpha_bound_hand_computation_and_limits():
    torch.manual_seed(3)
    f = torch.randn(5, 5)
    for alpha in (0.0, 0.3, 1.0):
        ef = f.double().exp().numpy()
        m = ef.mean(0)                                  # m(y_j) = mean_k exp f(x_k, y_j)
        den = alpha * m + (1 - alpha) * 1.0             # baseline a = 1
        pos = np.mean([f[i, i].item() - np.log(den[i]) for i in range(5)])
        neg = np.mean([ef[i, j] / den[j] for i in range(5) for j in range(5) if i != j])
        assert abs(mi_alpha_bound(f, alpha).item() - (1 + pos - neg)) < 1e-5
    # a critic that separates positives scores higher than one that does not
    good = torch.eye(6) * 5.0
    assert mi_alpha_bound(good, 0.5) > mi_alpha_bound(torch.zeros(6, 6), 0.5)
