"""Train- and eval-time image transforms from a recipe's `data.transforms` (torchvision transforms v2).

    transforms: {size: 224, crop: random_resized, hflip: 0.5, auto_augment: trivialaugment,
                 normalize: model}

Train views: a crop (random-resized, padded random, or centre), a horizontal flip, an optional
RandAugment / TrivialAugment / AutoAugment, then float conversion and normalisation. Eval views:
resize of the shorter side to `resize` (default size / 0.875) and a centre crop of `size`.

The geometric part of a train view (crop box and flip) is drawn from a generator seeded by
(seed, epoch, sample id) and is returned as a small integer record, so a view can be replayed
exactly (the augmentation-aware teacher cache, FKD, Shen & Xing 2022); the photometric policies draw
from torch's RNG seeded the same way, so a run and its resume see the same views.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field

from distill.config import Strict
from distill.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class NormalizeConfig(Strict):
    mean: list[float]
    std: list[float]


class TransformConfig(Strict):
    size: int | None = Field(None, ge=4, description="side of the views the models see (default: the model's "
                             "pretrained input size, else the images' own size)")
    resize: int | None = Field(None, ge=4, description="eval: shorter side before the centre crop (default size/0.875)")
    crop: Literal["random_resized", "random", "center", "none"] = Field(
        "random_resized", description="train crop: random-resized (Inception style), random with padding "
        "(CIFAR style), centre, or none (resize only)")
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    crop_padding: int = Field(4, ge=0, description="padding of crop: random")
    hflip: float = Field(0.5, ge=0, le=1, description="probability of a horizontal flip")
    auto_augment: Literal["none", "randaugment", "trivialaugment", "autoaugment"] = "none"
    randaugment_ops: int = Field(2, ge=1)
    randaugment_magnitude: int = Field(9, ge=0, le=30)
    mixup: float = Field(0.0, ge=0, description="MixUp (Zhang et al. 2018) Beta(alpha, alpha) per batch; 0 = off")
    cutmix: float = Field(0.0, ge=0, description="CutMix (Yun et al. 2019) Beta(alpha, alpha) per batch; 0 = off")
    mix_prob: float = Field(1.0, ge=0, le=1, description="share of batches mixed (with both on, half each)")
    channels: Literal[1, 3] | None = Field(None, description="convert images to 1 or 3 channels (e.g. 3 for a "
                                           "pretrained RGB model on grey images)")
    normalize: Literal["model", "imagenet", "none"] | NormalizeConfig = Field(
        "model", description="model: the teacher's pretrained mean/std when it has them, else none")
    interpolation: Literal["bilinear", "bicubic", "nearest"] = "bilinear"

    @property
    def mixes(self) -> bool:
        return (self.mixup > 0 or self.cutmix > 0) and self.mix_prob > 0

    @property
    def replayable(self) -> bool:
        """Whether a train view is fully described by its crop box and flip (no photometric policy,
        no mixing of samples)."""
        return self.auto_augment == "none" and not self.mixes

    @property
    def random(self) -> bool:
        return (self.crop in ("random_resized", "random") or self.hflip > 0 or self.auto_augment != "none"
                or self.mixes)


def sample_seed(seed: int, epoch: int, idx: int) -> int:
    """A 63-bit seed for one (run seed, epoch, sample id): different in every epoch and for every sample."""
    h = (seed * 0x9E3779B97F4A7C15 + (epoch + 1) * 0xBF58476D1CE4E5B9 + idx * 0x94D049BB133111EB) % (1 << 64)
    h ^= h >> 31
    return (h * 0xD6E8FEB86659FD93 % (1 << 64)) >> 1


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def random_resized_box(h: int, w: int, scale: tuple[float, float], ratio: tuple[float, float],
                       g: torch.Generator) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a crop covering a uniform fraction of the area in `scale` with
    a log-uniform aspect ratio in `ratio` (Szegedy et al. 2015); 10 tries, then the central crop
    of the closest admissible ratio."""
    area = h * w
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * _uniform(g, *scale)
        r = math.exp(_uniform(g, *log_r))
        cw, ch = int(round(math.sqrt(target * r))), int(round(math.sqrt(target / r)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (), generator=g))
            left = int(torch.randint(0, w - cw + 1, (), generator=g))
            return top, left, ch, cw
    in_ratio = w / h
    if in_ratio < min(ratio):
        cw, ch = w, int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        ch, cw = h, int(round(h * max(ratio)))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


class ViewTransform:
    """Callable image -> float tensor (C, size, size); `train=True` views are drawn per (seed, epoch, id).

    `view(img, seed)` returns (tensor, record) where record = (top, left, height, width, flip) of the
    geometric part; `replay(img, record, seed)` applies a recorded one.
    """

    def __init__(self, cfg: TransformConfig, *, size: int, mean: list[float] | None, std: list[float] | None):
        import torchvision.transforms.v2 as v2

        self.cfg, self.size = cfg, size
        self.resize = cfg.resize or int(round(size / 0.875))
        self.interp = {"bilinear": v2.InterpolationMode.BILINEAR, "bicubic": v2.InterpolationMode.BICUBIC,
                       "nearest": v2.InterpolationMode.NEAREST}[cfg.interpolation]
        self.mean, self.std = mean, std
        policy = {"randaugment": lambda: v2.RandAugment(cfg.randaugment_ops, cfg.randaugment_magnitude),
                  "trivialaugment": v2.TrivialAugmentWide,
                  "autoaugment": lambda: v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)}.get(cfg.auto_augment)
        self.policy = policy() if policy else None

    def _to_image(self, img) -> torch.Tensor:
        """PIL image or tensor (C, H, W) (uint8, or float in [0, 1]) -> uint8 tensor with the configured channels."""
        import torchvision.transforms.v2.functional as F

        if not isinstance(img, torch.Tensor):
            t = F.pil_to_tensor(img.convert("RGB") if img.mode not in ("L", "RGB") else img)
        else:
            t = img if img.dim() == 3 else img.unsqueeze(0)
            if t.is_floating_point():
                t = (t.clamp(0, 1) * 255).round().to(torch.uint8)
        want = self.cfg.channels
        if want == 3 and t.shape[0] == 1:
            t = t.expand(3, -1, -1)
        elif want == 1 and t.shape[0] == 3:
            t = F.rgb_to_grayscale(t)
        return t

    def _finish(self, t: torch.Tensor) -> torch.Tensor:
        import torchvision.transforms.v2.functional as F

        x = t.float().div_(255)
        if self.mean is not None:
            x = F.normalize(x, self.mean, self.std)
        return x

    def eval(self, img) -> torch.Tensor:
        import torchvision.transforms.v2.functional as F

        t = self._to_image(img)
        h, w = t.shape[-2:]
        if (h, w) != (self.size, self.size):
            if self.cfg.crop == "none":
                t = F.resize(t, [self.size, self.size], interpolation=self.interp, antialias=True)
            else:
                if min(h, w) != self.resize:
                    t = F.resize(t, self.resize, interpolation=self.interp, antialias=True)
                t = F.center_crop(t, [self.size, self.size])
        return self._finish(t)

    def draw(self, h: int, w: int, g: torch.Generator) -> tuple[int, int, int, int, int]:
        """The geometric record (top, left, height, width, flip) of one train view of an h x w image."""
        c = self.cfg
        if c.crop == "random_resized":
            box = random_resized_box(h, w, c.crop_scale, c.crop_ratio, g)
        elif c.crop == "random":
            # pad by crop_padding, then a size x size crop of the (resized) image: offsets may be negative
            p = c.crop_padding
            top = int(torch.randint(-p, max(h - self.size, 0) + p + 1, (), generator=g))
            left = int(torch.randint(-p, max(w - self.size, 0) + p + 1, (), generator=g))
            box = (top, left, self.size, self.size)
        elif c.crop == "center":
            s = min(h, w)
            box = ((h - s) // 2, (w - s) // 2, s, s)
        else:
            box = (0, 0, h, w)
        flip = int(float(torch.rand((), generator=g)) < c.hflip)
        return (*box, flip)

    def _geometry(self, t: torch.Tensor) -> torch.Tensor:
        """Images for the `random` crop are first resized to `size` (its box is in those pixels)."""
        import torchvision.transforms.v2.functional as F

        if self.cfg.crop == "random" and tuple(t.shape[-2:]) != (self.size, self.size):
            t = F.resize(t, [self.size, self.size], interpolation=self.interp, antialias=True)
        return t

    def replay(self, img, record, seed: int) -> torch.Tensor:
        import torchvision.transforms.v2.functional as F

        top, left, ch, cw, flip = (int(v) for v in record)
        t = self._geometry(self._to_image(img))
        if self.cfg.crop == "random":
            p = self.cfg.crop_padding
            t = F.pad(t, [p, p, p, p])
            t = F.crop(t, top + p, left + p, ch, cw)
            if tuple(t.shape[-2:]) != (self.size, self.size):
                t = F.resize(t, [self.size, self.size], interpolation=self.interp, antialias=True)
        else:
            t = F.resized_crop(t, top, left, ch, cw, [self.size, self.size], interpolation=self.interp, antialias=True)
        if flip:
            t = F.horizontal_flip(t)
        if self.policy is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                t = self.policy(t)
        return self._finish(t)

    def view(self, img, seed: int) -> tuple[torch.Tensor, tuple[int, int, int, int, int]]:
        t = self._geometry(self._to_image(img))
        g = torch.Generator().manual_seed(seed)
        record = self.draw(int(t.shape[-2]), int(t.shape[-1]), g)
        return self.replay(t, record, seed), record


def resolve_normalization(cfg: TransformConfig, model_data_config: dict | None) -> tuple[list | None, list | None]:
    n = cfg.normalize
    if isinstance(n, NormalizeConfig):
        if len(n.mean) != len(n.std):
            raise ConfigError("data.transforms.normalize: mean and std need one value per channel each.")
        return n.mean, n.std
    if n == "imagenet":
        return list(IMAGENET_MEAN), list(IMAGENET_STD)
    if n == "model" and model_data_config and "mean" in model_data_config:
        return list(model_data_config["mean"]), list(model_data_config["std"])
    return None, None


class BatchMix:
    """MixUp / CutMix on a train batch (torchvision's v2.MixUp and v2.CutMix), drawn from a seed of
    (run seed, epoch, batch index): labels become soft targets (B, C)."""

    def __init__(self, cfg: TransformConfig, num_classes: int, seed: int):
        import torchvision.transforms.v2 as v2

        self.cfg, self.num_classes, self.seed = cfg, num_classes, seed
        self.ops = []
        if cfg.mixup > 0:
            self.ops.append(v2.MixUp(alpha=cfg.mixup, num_classes=num_classes))
        if cfg.cutmix > 0:
            self.ops.append(v2.CutMix(alpha=cfg.cutmix, num_classes=num_classes))

    def __call__(self, batch: dict, epoch: int, index: int) -> dict:
        if (batch["y"] < 0).any():
            raise ConfigError("data.transforms.mixup/cutmix mix labels, so every training sample needs one; "
                              "this batch has unlabeled samples (set data.params.labeled_fraction to 1, or turn "
                              "mixing off).")
        g = torch.Generator().manual_seed(sample_seed(self.seed + 1, epoch, 1_000_000_007 + index))
        if float(torch.rand((), generator=g)) >= self.cfg.mix_prob:
            y = torch.nn.functional.one_hot(batch["y"], self.num_classes).float()
            return {**batch, "y": y}
        op = self.ops[int(torch.randint(len(self.ops), (), generator=g))]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(2**62, (), generator=g)))
            x, y = op(batch["x"], batch["y"])
        return {**batch, "x": x, "y": y}
