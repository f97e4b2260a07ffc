"""Differentiable siamese augmentation (DSA; Zhao & Bilen, ICML 2021), as the authors' `DiffAugment`
in mode "S" with their `ParamDiffAug` settings.

One call applies ONE op group of the strategy, picked uniformly: color (brightness, saturation,
contrast), crop, cutout, flip, scale or rotate. Its random parameters come from a generator seeded
by `seed`:
- `siamese=True` (matching): one draw shared by every sample of the call, so `dsa(real, seed)` and
  `dsa(synthetic, seed)` apply the *same* transform to both batches whatever their sizes;
- `siamese=False` (training a network on a set: evaluation, experts, inner loops): one draw per sample.
Every op is differentiable in the images (affine resampling, integer gathers, masks).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"

# ParamDiffAug of the DSA code
PROB_FLIP = 0.5
RATIO_SCALE = 1.2  # sx, sy ~ U[1/1.2, 1.2]
RATIO_ROTATE = 15.0  # degrees, U[-15, 15]
RATIO_CROP_PAD = 0.125  # whole-pixel shifts up to int(H * 0.125 + 0.5)
RATIO_CUTOUT = 0.5  # a square of side int(H * 0.5 + 0.5)
BRIGHTNESS = 1.0  # x + (u - 0.5) * 1.0
SATURATION = 2.0  # factor u * 2.0 on the deviation from the channel mean
CONTRAST = 0.5  # factor u + 0.5 on the deviation from the image mean


class Draws:
    """Random parameters for one call: (B,) tensors, one value per sample, or (siamese) one value
    repeated over the batch, so batches of any size share it."""

    def __init__(self, g: torch.Generator, batch: int, siamese: bool, like: Tensor):
        self.g, self.batch, self.siamese, self.like = g, batch, siamese, like

    def _n(self) -> int:
        return 1 if self.siamese else self.batch

    def uniform(self, lo: float, hi: float) -> Tensor:  # (B,) in x's dtype and device
        u = torch.rand(self._n(), generator=self.g, dtype=torch.float64).expand(self.batch)
        return (lo + (hi - lo) * u).to(self.like)

    def integers(self, lo: int, hi: int) -> Tensor:  # (B,) long in [lo, hi)
        return torch.randint(lo, hi, (self._n(),), generator=self.g).expand(self.batch).to(self.like.device)


def _affine(x: Tensor, theta: Tensor) -> Tensor:
    """Resample x (B, C, H, W) with per-sample 2x3 matrices theta (B, 2, 3) in normalised coordinates
    (output -> input), bilinear with zero padding as the reference."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def color(x: Tensor, d: Draws) -> Tensor:
    """Brightness shift, then saturation (around the per-pixel channel mean), then contrast (around
    the image mean); a one-channel image is unchanged by saturation."""
    x = x + (d.uniform(-0.5, 0.5) * BRIGHTNESS).view(-1, 1, 1, 1)
    m = x.mean(dim=1, keepdim=True)  # (B, 1, H, W)
    x = (x - m) * d.uniform(0.0, SATURATION).view(-1, 1, 1, 1) + m
    m = x.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    return (x - m) * d.uniform(CONTRAST, 1.0 + CONTRAST).view(-1, 1, 1, 1) + m


def crop(x: Tensor, d: Draws, ratio: float = RATIO_CROP_PAD) -> Tensor:
    """Pad with zeros and crop back: out[i, j] = x[i + ty, j + tx], ty, tx whole pixels in
    {-s..s}, s = int(side * ratio + 0.5)."""
    B, _, H, W = x.shape
    sh, sw = int(H * ratio + 0.5), int(W * ratio + 0.5)
    ty, tx = d.integers(-sh, sh + 1), d.integers(-sw, sw + 1)  # (B,)
    rows = torch.arange(H, device=x.device) + sh + ty[:, None]  # (B, H) indices into the padded image
    cols = torch.arange(W, device=x.device) + sw + tx[:, None]  # (B, W)
    xp = F.pad(x, (sw, sw, sh, sh)).permute(0, 2, 3, 1)  # (B, H + 2sh, W + 2sw, C)
    b = torch.arange(B, device=x.device)[:, None, None]
    return xp[b, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # (B, C, H, W)


def cutout(x: Tensor, d: Draws, ratio: float = RATIO_CUTOUT) -> Tensor:
    """Zero a square of side k = int(side * ratio + 0.5) centred at o ~ U{0..side - (k % 2)}; the rows
    o - k//2 .. o - k//2 + k - 1 that fall inside the image (same for columns)."""
    _, _, H, W = x.shape
    kh, kw = int(H * ratio + 0.5), int(W * ratio + 0.5)
    oy, ox = d.integers(0, H + 1 - kh % 2), d.integers(0, W + 1 - kw % 2)  # (B,)
    i, j = torch.arange(H, device=x.device), torch.arange(W, device=x.device)
    top, left = oy[:, None] - kh // 2, ox[:, None] - kw // 2
    in_rows = (i >= top) & (i < top + kh)  # (B, H)
    in_cols = (j >= left) & (j < left + kw)  # (B, W)
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])  # (B, H, W)
    return x * keep.unsqueeze(1).to(x.dtype)


def flip(x: Tensor, d: Draws, p: float = PROB_FLIP) -> Tensor:
    """Mirror the last (width) axis with probability p."""
    return torch.where((d.uniform(0.0, 1.0) < p).view(-1, 1, 1, 1), x.flip(-1), x)


def scale(x: Tensor, d: Draws, ratio: float = RATIO_SCALE) -> Tensor:
    """theta = diag(sx, sy), sx and sy drawn separately from U[1/ratio, ratio]."""
    sx, sy = d.uniform(1 / ratio, ratio), d.uniform(1 / ratio, ratio)
    z = torch.zeros_like(sx)
    theta = torch.stack([torch.stack([sx, z, z], -1), torch.stack([z, sy, z], -1)], 1)  # (B, 2, 3)
    return _affine(x, theta)


def rotate(x: Tensor, d: Draws, degrees: float = RATIO_ROTATE) -> Tensor:
    """theta = [[cos a, -sin a], [sin a, cos a]], a ~ U[-degrees, degrees]."""
    a = d.uniform(-degrees, degrees) * (math.pi / 180)
    c, s, z = torch.cos(a), torch.sin(a), torch.zeros_like(a)
    theta = torch.stack([torch.stack([c, -s, z], -1), torch.stack([s, c, z], -1)], 1)  # (B, 2, 3)
    return _affine(x, theta)


_OPS = {"color": color, "crop": crop, "cutout": cutout, "flip": flip, "scale": scale, "rotate": rotate}


def check_strategy(strategy: str) -> str:
    bad = [p for p in strategy.split("_") if p and p not in _OPS and p != "none"]
    if bad:
        raise ValueError(f"unknown augmentation {bad}; allowed: {', '.join(_OPS)} joined by '_' (or 'none')")
    return strategy


def dsa(x: Tensor, seed: int, strategy: str = DEFAULT_STRATEGY, siamese: bool = True) -> Tensor:
    """Augment x (B, C, H, W) with one op group of `strategy` (mode "S"), a function of `seed` only.
    siamese: one parameter draw for the whole call (the same seed gives two batches the same
    transform); otherwise one draw per sample."""
    parts = [p for p in strategy.split("_") if p and p != "none"]
    if not parts:
        return x
    g = torch.Generator().manual_seed(int(seed))
    op = parts[int(torch.randint(0, len(parts), (), generator=g))]  # one group per call, uniform
    return _OPS[op](x, Draws(g, x.shape[0], siamese, x))


def _u(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def random_resized_crop(x: Tensor, seed: int, min_scale: float = 0.08, max_scale: float = 1.0) -> Tensor:
    """A differentiable random-resized crop (area share in [min_scale, max_scale]), one draw per batch."""
    g = torch.Generator().manual_seed(int(seed))
    area = _u(g, min_scale, max_scale)
    aspect = math.exp(_u(g, math.log(3 / 4), math.log(4 / 3)))
    sw, sh = min(1.0, math.sqrt(area * aspect)), min(1.0, math.sqrt(area / aspect))
    tx, ty = _u(g, -(1 - sw), 1 - sw), _u(g, -(1 - sh), 1 - sh)
    theta = torch.tensor([[sw, 0.0, tx], [0.0, sh, ty]], dtype=x.dtype, device=x.device)
    x = _affine(x, theta.unsqueeze(0).expand(x.shape[0], 2, 3))
    return x.flip(-1) if float(torch.rand((), generator=g)) < 0.5 else x
