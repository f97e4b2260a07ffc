"""DSA augmentation against the authors' reference (Zhao & Bilen, ICML 2021; `DiffAugment` and
`ParamDiffAug` in the DatasetCondensation repository's utils.py), checked from the outside: probe
images are built so that each transform's parameters can be read back from its output.

What the reference does, written out here (never taken from our module):
- mode "S": one op group of the strategy, uniform, per call (color = brightness, saturation, contrast);
- parameters are drawn per sample; with a seed (Siamese) one draw is shared by every sample of the
  call, and the same seed gives the same transform to the real and the synthetic batch;
- flip p=0.5 (last axis); scale sx, sy ~ U[1/1.2, 1.2] (theta = diag(sx, sy)); rotate ~ U[-15, 15]
  degrees (theta = [[cos, -sin], [sin, cos]]); both through affine_grid/grid_sample (bilinear, zeros);
- crop: an integer shift per axis, uniform in {-s..s} with s = int(H * 0.125 + 0.5), zero padding;
- cutout: a square of side k = int(H * 0.5 + 0.5) centred at o ~ U{0..H - (k % 2)}, rows
  [o - k//2, o - k//2 + k - 1] clipped to the image (so the area is k^2 unless it meets the border);
- brightness b ~ U[-0.5, 0.5] added; saturation s ~ U[0, 2] scales the deviation from the channel mean;
  contrast c ~ U[0.5, 1.5] scales the deviation from the image mean.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from distill.families.dataset.augment import dsa  # noqa: E402

GROUPS = ("color", "crop", "cutout", "flip", "scale", "rotate")
H = 16  # probe side: crop shifts of up to int(16 * 0.125 + 0.5) = 2 pixels, cutout side 8


def coord_probe(b: int, h: int = H, gain: float = 1.0) -> torch.Tensor:
    """(b, 3, h, h) float64: channel 0 the x coordinate of each pixel centre as affine_grid sees it
    (align_corners=False), channel 1 the y coordinate, channel 2 ones; no value is 0."""
    c = (2 * torch.arange(h, dtype=torch.float64) + 1) / h - 1
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    img = torch.stack([xx, yy, torch.ones_like(xx)]) * gain
    return img.unsqueeze(0).repeat(b, 1, 1, 1)


def unique_probe(b: int, h: int = H, seed: int = 0) -> torch.Tensor:
    """(b, 1, h, h) positive pixel values, all distinct within an image."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(h * h, generator=g).double().view(1, h, h) + 1 for _ in range(b)])


def shifted(img: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """out[..., i, j] = img[..., i + dy, j + dx], zero outside (the reference's padded crop)."""
    h, w = img.shape[-2:]
    out = torch.zeros_like(img)
    ys, xs = slice(max(0, -dy), min(h, h - dy)), slice(max(0, -dx), min(w, w - dx))
    yi, xi = slice(max(0, dy), min(h, h + dy)), slice(max(0, dx), min(w, w + dx))
    out[..., ys, xs] = img[..., yi, xi]
    return out


# ---------------------------------------------------------------- reading parameters back


def read_flip(x: torch.Tensor, out: torch.Tensor) -> list[int] | None:
    res = []
    for a, o in zip(x, out):
        if torch.allclose(o, a, atol=1e-9):
            res.append(0)
        elif torch.allclose(o, a.flip(-1), atol=1e-9):
            res.append(1)
        else:
            return None
    return res


def read_crop(x: torch.Tensor, out: torch.Tensor, max_shift: int = 6) -> list[tuple[int, int]] | None:
    """Per sample the (dy, dx) with out = x shifted by whole pixels; None if some sample is not."""
    cands = [(dy, dx) for dy in range(-max_shift, max_shift + 1) for dx in range(-max_shift, max_shift + 1)]
    match = torch.stack([((out - shifted(x, dy, dx)).abs() <= 1e-9).flatten(1).all(1) for dy, dx in cands], 1)
    if not bool((match.sum(1) == 1).all()):  # (B, K): exactly one shift explains each sample
        return None
    return [cands[int(i)] for i in match.double().argmax(1)]


def read_cutout(x: torch.Tensor, out: torch.Tensor) -> list[tuple[int, int, int, int]] | None:
    """Per sample the blanked rectangle (top, bottom, left, right), inclusive; None if not a cutout."""
    res = []
    for a, o in zip(x, out):
        zero = (o.abs() < 1e-12).all(0)  # (h, w)
        if not zero.any() or not torch.allclose(o[:, ~zero], a[:, ~zero], atol=1e-9):
            return None
        rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        t, b, l, r = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
        if int(zero.sum()) != (b - t + 1) * (r - l + 1):
            return None  # not a rectangle
        res.append((t, b, l, r))
    return res


def read_linear(x: torch.Tensor, out: torch.Tensor) -> list[torch.Tensor] | None:
    """The 2x2 matrix M with out_(x, y) = M (x, y) on central pixels of a coord probe (affine ops)."""
    h = x.shape[-1]
    ctr = slice(h // 4, h - h // 4)  # sampling points stay well inside the image for scale <= 1.2
    res = []
    for a, o in zip(x, out):
        src = a[:2, ctr, ctr].reshape(2, -1).T  # (P, 2)
        dst = o[:2, ctr, ctr].reshape(2, -1).T
        m = torch.linalg.lstsq(src, dst).solution.T  # (2, 2)
        if (src @ m.T - dst).abs().max() > 1e-6 or not torch.allclose(o[2, ctr, ctr], a[2, ctr, ctr], atol=1e-9):
            return None
        res.append(m)
    return res


def read_scale(x, out):
    ms = read_linear(x, out)
    if ms is None or any(abs(m[0, 1]) > 1e-6 or abs(m[1, 0]) > 1e-6 for m in ms):
        return None
    # theta maps output coordinates to input ones: the probe's value at (x, y) is (sx x, sy y)
    return [(float(m[0, 0]), float(m[1, 1])) for m in ms]


def read_rotate(x, out):
    ms = read_linear(x, out)
    if ms is None or any(abs(m[0, 0] - m[1, 1]) > 1e-6 or abs(m[0, 1] + m[1, 0]) > 1e-6 or
                         abs(m[0, 0] ** 2 + m[1, 0] ** 2 - 1) > 1e-6 for m in ms):
        return None
    return [math.degrees(math.atan2(float(m[1, 0]), float(m[0, 0]))) for m in ms]


def read_color(x: torch.Tensor, out: torch.Tensor) -> list[tuple[float, float, float]] | None:
    """(brightness b, saturation s, contrast c) per sample from out = c (L - mean L) + c s D + mean L + b,
    L the channel mean of each pixel and D = x - L (the reference's three steps composed)."""
    res = []
    for a, o in zip(x, out):
        L, D = a.mean(0, keepdim=True), a - a.mean(0, keepdim=True)
        Lo, Do = o.mean(0, keepdim=True), o - o.mean(0, keepdim=True)
        Lc = L - L.mean()
        c = float((Lo - Lo.mean()).flatten() @ Lc.flatten() / (Lc.flatten() @ Lc.flatten()))
        cs = float(Do.flatten() @ D.flatten() / (D.flatten() @ D.flatten()))
        b = float(Lo.mean() - L.mean())
        if not torch.allclose(o, c * Lc + cs * D + L.mean() + b, atol=1e-6):
            return None
        res.append((b, cs / c, c))
    return res


def color_probe(b: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, 8, 8, generator=g, dtype=torch.float64)


def classify(x_coord: torch.Tensor, out: torch.Tensor) -> str | None:
    """Which single op group produced `out` from the coord probe (None: none of them alone)."""
    if read_flip(x_coord, out) is not None and any(read_flip(x_coord, out)):
        return "flip"
    crop = read_crop(x_coord, out, max_shift=3)
    if crop is not None and any(s != (0, 0) for s in crop):
        return "crop"
    if read_cutout(x_coord, out) is not None:
        return "cutout"
    if read_scale(x_coord, out) is not None:
        return "scale"
    if read_rotate(x_coord, out) is not None:
        return "rotate"
    if read_color(x_coord, out) is not None:
        return "color"
    return None


# ---------------------------------------------------------------- mode "S": one group per call


def test_mode_s_applies_exactly_one_group_per_call_uniformly():
    counts = dict.fromkeys(GROUPS, 0)
    n = 600
    x = coord_probe(12)
    for seed in range(n):
        kind = classify(x, dsa(x, seed, siamese=False))
        assert kind is not None, f"seed {seed}: the output is not one op group alone"
        counts[kind] += 1
    # uniform over the six: expected 100 each, binomial sd ~ 9
    for k, v in counts.items():
        assert 65 <= v <= 135, counts


def test_mode_s_draws_from_the_strategy_groups_only():
    x = coord_probe(8)
    seen = {classify(x, dsa(x, seed, "flip_rotate", siamese=False)) for seed in range(60)}
    assert seen == {"flip", "rotate"}


# ---------------------------------------------------------------- each op's parameter distribution


def test_flip_is_per_sample_with_probability_half():
    x = unique_probe(64)
    flips = []
    for seed in range(50):
        f = read_flip(x, dsa(x, seed, "flip", siamese=False))
        assert f is not None
        assert 0 < sum(f) < len(f)  # drawn per sample, not one coin for the batch
        flips += f
    assert abs(sum(flips) / len(flips) - 0.5) < 0.03


@pytest.mark.parametrize("h", [8, 16, 28])
def test_crop_is_an_integer_shift_uniform_within_the_reference_padding(h):
    s = int(h * 0.125 + 0.5)  # 1, 2, 4 pixels
    x = unique_probe(32, h)
    shifts = []
    for seed in range(60 if h < 28 else 8):
        got = read_crop(x, dsa(x, seed, "crop", siamese=False), max_shift=s + 2)
        assert got is not None, "crop must translate by whole pixels with zero fill"
        shifts += got
    assert {d for d, _ in shifts} == set(range(-s, s + 1))
    assert {d for _, d in shifts} == set(range(-s, s + 1))
    if h == 16:  # 1920 draws over 25 cells: 76.8 each, sd ~ 8.6
        for dy in range(-s, s + 1):
            for dx in range(-s, s + 1):
                assert 45 <= shifts.count((dy, dx)) <= 110


@pytest.mark.parametrize("h", [8, 7, 16, 28])
def test_cutout_blanks_a_ratio_h_square_at_the_reference_centres(h):
    k = int(h * 0.5 + 0.5)  # 4, 4, 8, 14: the reference's cutout side at ratio 0.5
    centres = range(h + (1 - k % 2))
    # the reference's clipped extent along one axis, for each centre (all equally likely)
    extent = [(max(0, o - k // 2), min(h - 1, o - k // 2 + k - 1)) for o in centres]
    x = torch.ones(40, 2, h, h, dtype=torch.float64) * 3
    rects = []
    for seed in range(80):
        got = read_cutout(x, dsa(x, seed, "cutout", siamese=False))
        assert got is not None
        rects += got
    inside = [r for r in rects if r[0] > 0 and r[1] < h - 1 and r[2] > 0 and r[3] < h - 1]
    assert inside and all((b - t + 1) * (r - l + 1) == k * k for t, b, l, r in inside)
    assert max((b - t + 1) for t, b, _, _ in rects) == k and max((r - l + 1) for _, _, l, r in rects) == k
    n = len(rects)  # 3200
    for axis in (0, 1):
        seen = [(r[2 * axis], r[2 * axis + 1]) for r in rects]
        assert set(seen) <= set(extent)
        for e in set(extent):
            p = extent.count(e) / len(extent)
            assert abs(seen.count(e) / n - p) < 4 * math.sqrt(p * (1 - p) / n) + 0.005, (e, seen.count(e) / n, p)


def _uniform_ok(v: list[float], lo: float, hi: float) -> None:
    t = torch.tensor(v)
    assert float(t.min()) >= lo - 1e-6 and float(t.max()) <= hi + 1e-6
    span = hi - lo
    assert float(t.min()) < lo + 0.02 * span and float(t.max()) > hi - 0.02 * span
    for q in range(4):  # each quarter of the range holds a quarter of the draws
        share = float(((t >= lo + q * span / 4) & (t < lo + (q + 1) * span / 4)).double().mean())
        assert abs(share - 0.25) < 0.04, (q, share)


def test_scale_factors_are_per_sample_independent_uniform_in_1_over_1_2_to_1_2():
    x = coord_probe(32)
    sx, sy = [], []
    for seed in range(40):
        got = read_scale(x, dsa(x, seed, "scale", siamese=False))
        assert got is not None
        assert len({round(a, 9) for a, _ in got}) == len(got)  # per sample
        sx += [a for a, _ in got]
        sy += [b for _, b in got]
    _uniform_ok(sx, 1 / 1.2, 1.2)
    _uniform_ok(sy, 1 / 1.2, 1.2)
    assert abs(float(torch.corrcoef(torch.tensor([sx, sy]))[0, 1])) < 0.1  # drawn separately


def test_rotation_is_per_sample_uniform_within_15_degrees():
    x = coord_probe(32)
    angles = []
    for seed in range(40):
        got = read_rotate(x, dsa(x, seed, "rotate", siamese=False))
        assert got is not None
        assert len({round(a, 9) for a in got}) == len(got)
        angles += got
    _uniform_ok(angles, -15.0, 15.0)


def test_color_brightness_saturation_contrast_are_per_sample_in_the_reference_ranges():
    x = color_probe(32)
    b, s, c = [], [], []
    for seed in range(40):
        got = read_color(x, dsa(x, seed, "color", siamese=False))
        assert got is not None
        assert len({round(v[0], 9) for v in got}) == len(got)
        b += [v[0] for v in got]
        s += [v[1] for v in got]
        c += [v[2] for v in got]
    _uniform_ok(b, -0.5, 0.5)  # brightness 1.0: x + (u - 0.5) * 1.0
    _uniform_ok(s, 0.0, 2.0)  # saturation 2.0: u * 2.0
    _uniform_ok(c, 0.5, 1.5)  # contrast 0.5: u + 0.5


# ---------------------------------------------------------------- siamese: one draw for both batches


READERS = {"flip": (unique_probe, read_flip), "crop": (unique_probe, read_crop),
           "cutout": (lambda b, seed=0: torch.ones(b, 1, H, H, dtype=torch.float64) * (2 + seed), read_cutout),
           "scale": (lambda b, seed=0: coord_probe(b, gain=1 + seed), read_scale),
           "rotate": (lambda b, seed=0: coord_probe(b, gain=1 + seed), read_rotate),
           "color": (color_probe, read_color)}


def _same(a, b) -> bool:
    return all(torch.allclose(torch.as_tensor(p, dtype=torch.float64), torch.as_tensor(q, dtype=torch.float64),
                              atol=1e-6) for p, q in zip(a, b))


def test_siamese_call_gives_two_batches_the_same_parameters_for_every_op():
    for op in GROUPS:
        make, read = READERS[op]
        for seed in range(15):
            real, syn = make(10, seed=1), make(10, seed=2)  # different images, same size
            pr, ps = read(real, dsa(real, seed, op)), read(syn, dsa(syn, seed, op))
            assert pr is not None and ps is not None, op
            assert _same(pr, ps), op
            assert _same(pr, [pr[0]] * len(pr)), op  # the reference shares the first draw across the batch
            small = make(3, seed=3)  # a synthetic batch smaller than the real one gets the same transform
            assert _same(read(small, dsa(small, seed, op)), pr[:3]), op


def test_siamese_call_with_the_full_strategy_picks_one_group_and_one_draw_for_both():
    kinds = set()
    for seed in range(60):
        real, syn = coord_probe(6), coord_probe(6, gain=2.0)
        kr, ks = classify(real, dsa(real, seed)), classify(syn / 2, dsa(syn, seed) / 2)
        if kr is None:  # an identity draw (no flip, zero shift) reads as nothing; then both must be identity
            assert torch.allclose(dsa(real, seed), real) and torch.allclose(dsa(syn, seed), syn)
            continue
        assert kr == ks
        kinds.add(kr)
    assert len(kinds) >= 5  # not one fixed chain of transforms


def test_guard_the_same_seed_repeats_and_another_seed_differs():
    x = color_probe(4)
    assert torch.equal(dsa(x, 7, siamese=False), dsa(x, 7, siamese=False))
    assert not torch.allclose(dsa(x, 7, "color", siamese=False), dsa(x, 8, "color", siamese=False))


@pytest.mark.parametrize("op", GROUPS)
def test_guard_every_op_is_differentiable_in_both_modes(op):
    x = torch.randn(3, 2, 6, 6, dtype=torch.double, requires_grad=True)
    for siamese in (True, False):
        assert torch.autograd.gradcheck(lambda t: dsa(t, 3, op, siamese=siamese), (x,))


# ---------------------------------------------------------------- evaluation draws per sample


def test_evaluation_augments_every_sample_of_a_batch_independently():
    from distill.families.dataset.evaluate import EvalProtocol, train_one

    seen: list[torch.Tensor] = []

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3 * H * H, 10)

        def forward(self, x):
            if self.training:
                seen.append(x.detach().clone())
            return self.fc(x.flatten(1).float())

    images = coord_probe(16).float()  # 16 copies of one image: any difference comes from augmentation
    labels = torch.arange(16) % 10
    p = EvalProtocol(epochs=40, batch_size=16)
    train_one(lambda s: Recorder(), images, labels, images[:2], labels[:2], p, seed=0)
    assert len(seen) == 40
    # per batch: an op group whose draws can be the identity (flip, crop) still changes some samples
    # and not others; with one draw per batch every batch would hold 16 equal images
    distinct = [len({tuple(b[i].flatten().tolist()) for i in range(len(b))}) for b in seen]
    assert sum(d > 1 for d in distinct) >= 38, distinct
