"""Differentiable siamese augmentation (DSA; Zhao & Bilen, ICML 2021).

Every transform is a differentiable function of the images, and its random parameters come from
one `seed`: calling `dsa(real, seed)` and `dsa(synthetic, seed)` applies the *same* transform to
both batches (one parameter draw per batch, so batch sizes may differ). This is what lets
gradient or feature matching see augmented real and synthetic images side by side.

Mode "S" of the paper: flip (p=0.5) and colour are always drawn; then one of the geometric /
occlusion transforms (crop, cutout, scale, rotate) is picked at random.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"
_ONE_OF = ("crop", "cutout", "scale", "rotate")


def _u(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _affine(x: Tensor, theta: list[list[float]]) -> Tensor:
    """Resample x (B, C, H, W) with one 2x3 affine matrix (normalised coordinates)."""
    t = torch.tensor(theta, dtype=x.dtype, device=x.device).unsqueeze(0).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(t, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")


def color(x: Tensor, g: torch.Generator) -> Tensor:
    """Brightness shift, saturation and contrast scaling (differentiable in x)."""
    x = x + _u(g, -0.5, 0.5)
    if x.shape[1] > 1:
        m = x.mean(dim=1, keepdim=True)
        x = (x - m) * _u(g, 0.0, 2.0) + m
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - m) * _u(g, 0.5, 1.5) + m


def crop(x: Tensor, g: torch.Generator, ratio: float = 0.125) -> Tensor:
    """Translate by up to `ratio` of the side (zero padding), i.e. a padded random crop."""
    return _affine(x, [[1.0, 0.0, 2 * _u(g, -ratio, ratio)], [0.0, 1.0, 2 * _u(g, -ratio, ratio)]])


def scale(x: Tensor, g: torch.Generator, ratio: float = 1.2) -> Tensor:
    return _affine(x, [[_u(g, 1 / ratio, ratio), 0.0, 0.0], [0.0, _u(g, 1 / ratio, ratio), 0.0]])


def rotate(x: Tensor, g: torch.Generator, degrees: float = 15.0) -> Tensor:
    a = math.radians(_u(g, -degrees, degrees))
    return _affine(x, [[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]])


def flip(x: Tensor, g: torch.Generator, p: float = 0.5) -> Tensor:
    return x.flip(-1) if float(torch.rand((), generator=g)) < p else x


def cutout(x: Tensor, g: torch.Generator, ratio: float = 0.5) -> Tensor:
    """Zero a square of side `ratio`/2 of the image at a random place (multiplicative mask)."""
    H, W = x.shape[-2:]
    h, w = max(1, int(H * ratio / 2)), max(1, int(W * ratio / 2))
    cy, cx = int(torch.randint(0, H, (), generator=g)), int(torch.randint(0, W, (), generator=g))
    mask = torch.ones(H, W, dtype=x.dtype, device=x.device)
    mask[max(0, cy - h // 2): cy + (h + 1) // 2, max(0, cx - w // 2): cx + (w + 1) // 2] = 0
    return x * mask


_OPS = {"color": color, "crop": crop, "cutout": cutout, "flip": flip, "scale": scale, "rotate": rotate}


def check_strategy(strategy: str) -> str:
    bad = [p for p in strategy.split("_") if p and p not in _OPS and p != "none"]
    if bad:
        raise ValueError(f"unknown augmentation {bad}; allowed: {', '.join(_OPS)} joined by '_' (or 'none')")
    return strategy


def dsa(x: Tensor, seed: int, strategy: str = DEFAULT_STRATEGY) -> Tensor:
    """Augment x (B, C, H, W); the transform is a function of `seed` only (shared across batches)."""
    parts = [p for p in strategy.split("_") if p and p != "none"]
    if not parts:
        return x
    g = torch.Generator().manual_seed(int(seed))
    if "flip" in parts:
        x = flip(x, g)
    if "color" in parts:
        x = color(x, g)
    rest = [p for p in parts if p in _ONE_OF]
    if rest:
        x = _OPS[rest[int(torch.randint(0, len(rest), (), generator=g))]](x, g)
    return x


def random_resized_crop(x: Tensor, seed: int, min_scale: float = 0.08, max_scale: float = 1.0) -> Tensor:
    """A differentiable random-resized crop (area share in [min_scale, max_scale]), one draw per batch."""
    g = torch.Generator().manual_seed(int(seed))
    area = _u(g, min_scale, max_scale)
    aspect = math.exp(_u(g, math.log(3 / 4), math.log(4 / 3)))
    sw, sh = min(1.0, math.sqrt(area * aspect)), min(1.0, math.sqrt(area / aspect))
    tx, ty = _u(g, -(1 - sw), 1 - sw), _u(g, -(1 - sh), 1 - sh)
    x = _affine(x, [[sw, 0.0, tx], [0.0, sh, ty]])
    return flip(x, g)
