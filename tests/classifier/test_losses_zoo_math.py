"""Analytic checks of the feature and relation losses (each fails if its equation is wrong)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distill.losses import divergence
from distill.losses import features as LF
from distill.losses import relations as LR

torch.manual_seed(0)


def test_attention_map_and_at_loss_manual():
    f = torch.randn(3, 5, 4, 4)
    a = LF.attention_map(f)
    manual = f.pow(2).mean(1).flatten(1)
    manual = manual / manual.norm(dim=1, keepdim=True)
    assert torch.allclose(a, manual, atol=1e-6)
    g = torch.randn(3, 7, 4, 4)
    expected = (a - LF.attention_map(g)).pow(2).sum(1).mean()
    assert torch.allclose(LF.at_loss(f, g), expected, atol=1e-6)
    # attention is normalised: scaling a map or changing its channel count keeps it
    assert LF.at_loss(f, 3 * f).item() < 1e-10
    assert LF.at_loss(f.repeat(1, 2, 1, 1), f).item() < 1e-10


def test_sp_loss_manual_and_invariance():
    fs, ft = torch.randn(4, 6), torch.randn(4, 9)
    gs = fs @ fs.t()
    gt = ft @ ft.t()
    gs, gt = gs / gs.norm(dim=1, keepdim=True), gt / gt.norm(dim=1, keepdim=True)
    assert torch.allclose(LF.sp_loss(fs, ft), (gs - gt).pow(2).sum() / 16, atol=1e-6)
    assert LF.sp_loss(fs, 2.5 * fs).item() < 1e-10


def test_pkt_is_kl_of_cosine_conditionals():
    fs, ft = torch.randn(5, 3), torch.randn(5, 8)

    def cond(f):
        f = f / f.norm(dim=1, keepdim=True)
        k = (f @ f.t() + 1) / 2
        return k / k.sum(1, keepdim=True)

    ps, pt = cond(fs), cond(ft)
    manual = (pt * (pt.log() - ps.log())).sum(1).mean()
    assert torch.allclose(LF.pkt_loss(fs, ft), manual, atol=1e-6)
    assert LF.pkt_loss(fs, 4 * fs).abs().item() < 1e-6


def test_nst_mmd_matches_explicit_sums():
    fs, ft = torch.randn(2, 3, 2, 2), torch.randn(2, 4, 2, 2)
    total = 0.0
    for b in range(2):
        s = F.normalize(fs[b].flatten(1), dim=1)
        t = F.normalize(ft[b].flatten(1), dim=1)
        k = lambda a, c: np.mean([[float(x @ y) ** 2 for y in c] for x in a])  # noqa: E731
        total += k(s, s) + k(t, t) - 2 * k(s, t)
    assert LF.nst_loss(fs, ft).item() == pytest.approx(total / 2, abs=1e-5)
    assert LF.nst_loss(ft, ft).abs().item() < 1e-6


def test_gaussian_nll_is_normal_log_prob():
    mu, t = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    log_scale = torch.randn(1, 4, 1, 1) * 0.3
    ref = -torch.distributions.Normal(mu, log_scale.exp()).log_prob(t) - 0.5 * math.log(2 * math.pi)
    assert torch.allclose(LF.gaussian_nll(mu, t, log_scale), ref.mean(), atol=1e-5)


def test_info_nce_in_batch_and_queue_forms():
    a, p, q = torch.randn(4, 8), torch.randn(4, 8), torch.randn(6, 8)
    an, pn, qn = (F.normalize(v, dim=1) for v in (a, p, q))
    tau = 0.2
    sim = an @ pn.t() / tau
    manual = -(sim.diag() - sim.logsumexp(1)).mean()
    assert torch.allclose(LF.info_nce(a, p, None, tau), manual, atol=1e-5)
    pos = (an * pn).sum(1) / tau
    allv = torch.cat([pos[:, None], an @ qn.t() / tau], 1)
    assert torch.allclose(LF.info_nce(a, p, q, tau), -(pos - allv.logsumexp(1)).mean(), atol=1e-5)
    # perfectly aligned, well separated pairs at a low temperature: loss near zero
    e = torch.eye(4, 8)
    assert LF.info_nce(e, e, None, 0.01).item() < 1e-6


def test_hcl_pyramid_weights():
    fs, ft = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    mse = F.mse_loss
    pool = F.adaptive_avg_pool2d
    # level 4 is skipped (not coarser than 4x4); levels 2 and 1 weigh 1/2 and 1/4
    manual = (mse(fs, ft) + 0.5 * mse(pool(fs, 2), pool(ft, 2)) + 0.25 * mse(pool(fs, 1), pool(ft, 1))) / 1.75
    assert torch.allclose(LF.hcl_loss(fs, ft), manual, atol=1e-6)
    assert LF.hcl_loss(fs, fs).item() == 0.0


def test_pairwise_distances_and_rkd_invariances():
    f = torch.randn(6, 5, requires_grad=True)
    d = LR.pairwise_distances(f)
    assert torch.allclose(d, torch.cdist(f, f), atol=1e-5)
    d.sum().backward()
    assert torch.isfinite(f.grad).all()
    g = torch.randn(6, 5)
    # distance loss is scale-free; angle loss is invariant to scale, translation and rotation
    assert LR.rkd_distance_loss(g, 3 * g).item() < 1e-10
    rot, _ = torch.linalg.qr(torch.randn(5, 5))
    assert LR.rkd_angle_loss(g, 2 * g @ rot + 1.0).item() < 1e-8
    assert LR.rkd_angle_loss(g, torch.randn(6, 5)).item() > 1e-3
    # RKD-D value on a 3-point example: distances (1, 1, sqrt2) vs (1, 2, sqrt5), mean-normalised;
    # the Huber loss averages over the full 3 x 3 matrix (each pair twice, the zero diagonal thrice)
    s = torch.tensor([[0.0, 0], [1, 0], [0, 1]])
    t = torch.tensor([[0.0, 0], [1, 0], [0, 2]])
    ds = torch.tensor([1, 1, math.sqrt(2)]) / ((2 + math.sqrt(2)) / 3)
    dt = torch.tensor([1, 2, math.sqrt(5)]) / ((3 + math.sqrt(5)) / 3)
    pairs = F.smooth_l1_loss(ds, dt, reduction="sum").item()
    assert LR.rkd_distance_loss(s, t).item() == pytest.approx(2 * pairs / 9, abs=1e-6)


def test_triplet_angle_value():
    f = torch.tensor([[0.0, 0], [1, 0], [0, 1]])
    ang = LR.triplet_angles(f)
    assert ang[0, 1, 2].item() == pytest.approx(0.0, abs=1e-6)          # right angle at the origin
    assert ang[1, 0, 2].item() == pytest.approx(math.cos(math.pi / 4), abs=1e-6)


def test_cc_taylor_kernel_converges_to_gaussian():
    f = torch.randn(5, 4)
    fn = F.normalize(f, dim=1)
    exact = torch.exp(-0.4 * torch.cdist(fn, fn).pow(2))
    assert torch.allclose(LR.gaussian_correlation(f, 0.4, order=12), exact, atol=1e-5)
    assert not torch.allclose(LR.gaussian_correlation(f, 0.4, order=1), exact, atol=1e-3)
    g = torch.randn(5, 9)
    manual = (LR.gaussian_correlation(f) - LR.gaussian_correlation(g)).pow(2).sum() / 25
    assert torch.allclose(LR.cc_loss(f, g), manual)


def test_dist_terms_are_pearson_distances():
    s, t = torch.randn(6, 5), torch.randn(6, 5)
    inter, intra = LR.dist_terms(s, t, temperature=2.0)
    ps, pt = F.softmax(s / 2, -1).numpy(), F.softmax(t / 2, -1).numpy()
    r_inter = np.mean([np.corrcoef(ps[i], pt[i])[0, 1] for i in range(6)])
    r_intra = np.mean([np.corrcoef(ps[:, c], pt[:, c])[0, 1] for c in range(5)])
    assert inter.item() == pytest.approx(4 * (1 - r_inter), abs=1e-4)
    assert intra.item() == pytest.approx(4 * (1 - r_intra), abs=1e-4)
    zero = LR.dist_terms(s, s)
    assert abs(zero[0].item()) < 1e-5 and abs(zero[1].item()) < 1e-5


def test_standardize_logits_invariance():
    z = torch.randn(4, 10)
    assert torch.allclose(LR.standardize_logits(z), LR.standardize_logits(3 * z + 7), atol=1e-5)
    zs = LR.standardize_logits(z)
    assert torch.allclose(zs.mean(-1), torch.zeros(4), atol=1e-6)
    assert torch.allclose(zs.std(-1), torch.ones(4), atol=1e-5)


def test_ofa_loss_target_enhancement():
    """OFA's target enhancement on hand-picked probabilities (Hao et al. 2023: weight (p + 1)^eps - 1
    on the target class, p^eps elsewhere); the full comparison with the authors' expression is in
    test_ref_losses.py."""
    pt = torch.tensor([[0.5, 0.3, 0.2]])
    t = pt.log()                       # softmax(t) = pt
    s = torch.zeros(1, 3)              # log p_s = -log 3 everywhere
    y = torch.tensor([0])
    lp = -math.log(3)
    for eps, w in ((1.0, [0.5, 0.3, 0.2]), (2.0, [1.5**2 - 1, 0.09, 0.04]), (0.5, [1.5**0.5 - 1, 0.3**0.5, 0.2**0.5])):
        assert LR.ofa_loss(s, t, y, eps).item() == pytest.approx(-sum(w) * lp, rel=1e-6)


def test_entropy_uniform():
    assert LR.entropy(torch.zeros(2, 8)).tolist() == pytest.approx([math.log(8)] * 2, abs=1e-6)


def test_ls_kd_is_kd_on_zscores_and_scale_free():
    from distill.methods.ls_kd import ls_kd_loss

    s, t = torch.randn(5, 10), torch.randn(5, 10)
    ref = divergence(LR.standardize_logits(s), LR.standardize_logits(t), temperature=2.0) * 4
    assert torch.allclose(ls_kd_loss(s, t, 2.0), ref, atol=1e-6)
    assert torch.allclose(ls_kd_loss(s, 5 * t - 2, 2.0), ls_kd_loss(s, t, 2.0), atol=1e-5)
    # plain KD is not scale-free: this is what logit standardisation changes
    assert not torch.allclose(divergence(s, 5 * t), divergence(s, t), atol=1e-3)
