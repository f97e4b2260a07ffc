"""Image denoisers on a `diffusers.UNet2DModel`, class-conditional with classifier-free guidance.

Every diffusion method calls a denoiser as `net(x, t)`: x (B, C, H, W), t (B,) in [0, 1]. The class
labels therefore travel beside that call, in a context both the teacher and the student read:

    with conditioning(y):                 # y (B,) long; None = the null class (unconditional)
        terms = method(batch)             # teacher and student see the same labels
    with conditioning(y), guidance(teacher_net, 3.0):
        x = ddim_sample(teacher, process, z, 64, "velocity")   # CFG: u + w (c - u)

Class index `num_classes` is the null label: the teacher is trained with labels dropped to it
(Ho & Salimans 2022, "Classifier-Free Diffusion Guidance"), so one network gives both the
conditional output c and the unconditional output u. The guidance scale belongs to a network
(`net.guidance_scale`), so a guided teacher and an unguided student can share one context.
A UNet saved with `save_pretrained` (ours or a user's) is loaded with `load_unet(path)`.
"""
from __future__ import annotations

import contextlib
import contextvars
from pathlib import Path
from typing import Iterator

import torch
from pydantic import Field
from torch import Tensor, nn
from typing_extensions import Annotated

from distill.registry import register_model

_LABELS: contextvars.ContextVar[Tensor | None] = contextvars.ContextVar("distill_diffusion_labels", default=None)
TIMESTEPS = 1000  # t in [0, 1] is shown to the UNet as t * (TIMESTEPS - 1), the scale of its time embedding


@contextlib.contextmanager
def conditioning(labels: Tensor | None) -> Iterator[None]:
    """Class labels (B,) for every conditional denoiser called inside; None = unconditional."""
    token = _LABELS.set(labels)
    try:
        yield
    finally:
        _LABELS.reset(token)


def current_labels() -> Tensor | None:
    """The labels set by the innermost `conditioning` (None: unconditional)."""
    return _LABELS.get()


def null_labels(n: int, num_classes: int, device) -> Tensor:
    return torch.full((n,), num_classes, dtype=torch.long, device=device)


@contextlib.contextmanager
def guidance(net: nn.Module, scale: float) -> Iterator[None]:
    """Run `net` (a UNetDenoiser, or a Teacher around one) with classifier-free guidance scale `scale`."""
    module = getattr(net, "module", net)
    old = module.guidance_scale
    module.guidance_scale = float(scale)
    try:
        yield
    finally:
        module.guidance_scale = old


class UNetDenoiser(nn.Module):
    """f(x, t) on a diffusers UNet2DModel: (B, C, H, W), (B,) -> (B, C, H, W).

    num_classes: None for an unconditional UNet; else the UNet has num_classes + 1 class embeddings
    (the last one is the null label) and reads its labels from `conditioning`.
    """

    def __init__(self, unet: nn.Module, guidance_scale: float = 1.0):
        super().__init__()
        self.unet = unet
        n = getattr(unet.config, "num_class_embeds", None)
        self.num_classes: int | None = None if n is None else int(n) - 1
        self.guidance_scale = guidance_scale

    def _raw(self, x: Tensor, t: Tensor, y: Tensor | None) -> Tensor:
        steps = t.to(x.dtype) * (TIMESTEPS - 1)
        return self.unet(x, steps, class_labels=y).sample

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        if self.num_classes is None:
            return self._raw(x, t, None)
        y = _LABELS.get() if y is None else y
        null = null_labels(x.shape[0], self.num_classes, x.device)
        if y is None:
            return self._raw(x, t, null)
        y = torch.as_tensor(y, device=x.device).long()
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"conditioning: {y.shape[0]} labels for a batch of {x.shape[0]}; set labels "
                             "per batch (methods that draw their own batches run unconditionally: labels None)")
        if self.guidance_scale == 1.0:
            return self._raw(x, t, y)
        out = self._raw(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))   # (2B, C, H, W)
        c, u = out.chunk(2)
        return u + self.guidance_scale * (c - u)

    def save_pretrained(self, folder: str | Path) -> None:
        self.unet.save_pretrained(str(folder))


def make_unet(channels: int = 1, size: int = 16, widths: tuple[int, ...] = (32, 64), layers_per_block: int = 1,
              num_classes: int | None = 10, groups: int = 8) -> nn.Module:
    """A small UNet2DModel: one down/up block per width, attention off (cheap on CPU)."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=size, in_channels=channels, out_channels=channels, block_out_channels=tuple(widths),
        layers_per_block=layers_per_block, down_block_types=("DownBlock2D",) * len(widths),
        up_block_types=("UpBlock2D",) * len(widths), norm_num_groups=groups,
        num_class_embeds=None if num_classes is None else num_classes + 1)


def load_unet(path: str | Path, guidance_scale: float = 1.0) -> UNetDenoiser:
    """A denoiser around the UNet2DModel saved in `path` (a save_pretrained folder)."""
    from diffusers import UNet2DModel

    p = Path(path)
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"unet: no diffusers UNet folder at {p} (expected config.json and weights)")
    return UNetDenoiser(UNet2DModel.from_pretrained(str(p)), guidance_scale)


@register_model("unet", family="diffusion", injected=("dim",),
                description="class-conditional diffusers UNet2DModel denoiser for small images (CFG-ready)")
def unet(dim: tuple[int, ...] = (1, 16, 16), widths: list[int] = [32, 64],  # noqa: B006 (read only)
         layers_per_block: Annotated[int, Field(ge=1)] = 1, num_classes: int | None = 10,
         groups: Annotated[int, Field(ge=1)] = 8) -> UNetDenoiser:
    return UNetDenoiser(make_unet(dim[0], dim[-1], tuple(widths), layers_per_block, num_classes, groups))


@register_model("diffusers_unet", family="diffusion", injected=("dim",),
                description="a diffusers UNet2DModel loaded from a save_pretrained folder (teacher by path)")
def diffusers_unet(path: str, dim: tuple[int, ...] | None = None, guidance_scale: float = 1.0) -> UNetDenoiser:
    return load_unet(path, guidance_scale)
