"""Analytic checks of the dataset family's math: DM, gradient matching, DSA, soft labels, herding."""
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from ds_helpers import tiny_ctx  # noqa: E402

from distill.families.dataset.augment import check_strategy, dsa  # noqa: E402
from distill.families.dataset.base import match_distance, soft_or_hard_loss  # noqa: E402
from distill.families.dataset.dm import DM, mean_embedding_loss  # noqa: E402
from distill.families.dataset.herding import herd  # noqa: E402


def test_dm_loss_zero_when_synthetic_has_real_statistics():
    ctx = tiny_ctx(ipc=6, per_class=6)
    m = DM(ctx, batch_real=6, augment=False)
    m.setup()
    with torch.no_grad():  # the synthetic images of each class = all real images of the class (other order)
        for c in range(10):
            m.class_images(c).copy_(ctx.x[ctx.by_class[c].flip(0)])
    net = ctx.make_net(1)
    for c in range(10):
        assert float(m.class_loss(net, c).detach()) == pytest.approx(0.0, abs=1e-9)
    f = torch.randn(7, 5)
    assert float(mean_embedding_loss(f, f[torch.randperm(7)])) == pytest.approx(0.0, abs=1e-10)
    assert float(mean_embedding_loss(f, f + 1.0)) == pytest.approx(5.0, rel=1e-5)  # D * 1^2


def test_dm_step_lowers_its_loss():
    ctx = tiny_ctx(ipc=1)
    m = DM(ctx, batch_real=6, augment=False, lr_img=0.5)
    m.setup()
    net = ctx.make_net(5)
    for p in net.parameters():
        p.requires_grad_(False)
    before = float(sum(m.class_loss(net, c) for c in range(10)))
    for _ in range(5):
        loss = sum(m.class_loss(net, c) for c in range(10))
        m.opt_img.zero_grad()
        loss.backward()
        m.opt_img.step()
    assert float(sum(m.class_loss(net, c) for c in range(10))) < before


def test_gradient_matching_distance_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    a = [torch.randn(3, 2, 2, 2, generator=g), torch.randn(3, generator=g), torch.randn(4, 5, generator=g)]
    b = [torch.randn(3, 2, 2, 2, generator=g), torch.randn(3, generator=g), torch.randn(4, 5, generator=g)]
    want = 0.0
    for x, y in ((a[0].reshape(3, -1), b[0].reshape(3, -1)), (a[2], b[2])):  # the bias (1-d) is skipped
        for i in range(x.shape[0]):
            u, v = x[i].tolist(), y[i].tolist()
            dot = sum(p * q for p, q in zip(u, v))
            nu, nv = sum(p * p for p in u) ** 0.5, sum(q * q for q in v) ** 0.5
            want += 1 - dot / (nu * nv)
    assert float(match_distance(a, b)) == pytest.approx(want, rel=1e-5)
    assert float(match_distance(a, a)) == pytest.approx(0.0, abs=1e-5)
    assert float(match_distance(a, [2.5 * t for t in a])) == pytest.approx(0.0, abs=1e-5)  # scale invariant


def test_dsa_is_shared_across_batches_with_one_seed_and_differentiable():
    g = torch.Generator().manual_seed(0)
    real, syn = torch.randn(5, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    for seed in range(12):  # covers every transform of mode "S"
        both = dsa(torch.cat([real, syn]), seed)
        assert torch.allclose(both[:5], dsa(real, seed), atol=1e-6)
        assert torch.allclose(both[5:], dsa(syn, seed), atol=1e-6)
    assert not torch.allclose(dsa(real, 1), dsa(real, 2))
    for op in ("color", "crop", "cutout", "flip", "scale", "rotate"):
        x = torch.randn(2, 1, 6, 6, dtype=torch.double, requires_grad=True)
        assert torch.autograd.gradcheck(lambda t: dsa(t, 3, op), (x,))
    with pytest.raises(ValueError, match="blur"):
        check_strategy("color_blur")


def test_soft_label_loss_is_the_shared_kl():
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    want = F.kl_div(F.log_softmax(s / 2, -1), F.log_softmax(t / 2, -1), log_target=True, reduction="batchmean") * 4
    assert float(soft_or_hard_loss(s, t, temperature=2.0)) == pytest.approx(float(want), rel=1e-5)
    y = torch.tensor([1, 2, 3, 4])
    assert float(soft_or_hard_loss(s, y)) == pytest.approx(float(F.cross_entropy(s, y)))


def test_herding_mean_is_closer_than_random_selection():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(200, 6, generator=g) * torch.linspace(0.5, 3, 6)
    pick = herd(f, 5)
    assert len(set(pick)) == 5
    err = float(((f[pick].mean(0) - f.mean(0)) ** 2).sum())
    rand = [float(((f[torch.randperm(200, generator=g)[:5]].mean(0) - f.mean(0)) ** 2).sum()) for _ in range(50)]
    assert err < sorted(rand)[5]
