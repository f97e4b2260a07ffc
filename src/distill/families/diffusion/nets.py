"""Denoisers for 2-D toys: an MLP on (x, Fourier features of t), optionally class-conditional.

A class-conditional MLP (num_classes set) reads its labels from `unet.conditioning`, like the UNet:
class index num_classes is the null label (unconditional), and `unet.guidance(net, w)` runs it with
classifier-free guidance u + w (c - u) (Ho & Salimans 2022)."""
from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import Tensor, nn
from typing_extensions import Annotated

from distill.families.diffusion.unet import current_labels, null_labels
from distill.registry import register_model


class TimeMLP(nn.Module):
    """f(x, t): x (B, D), t (B,) in [0, 1] -> (B, D). Time enters as sin/cos features added to every layer;
    with num_classes, a class embedding (num_classes + 1 rows, the last the null class) is added beside it."""

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, time_features: int = 16,
                 num_classes: int | None = None):
        super().__init__()
        self.dim, self.hidden, self.depth, self.num_classes = dim, hidden, depth, num_classes
        self.guidance_scale = 1.0
        if num_classes is not None:
            self.cemb = nn.Embedding(num_classes + 1, hidden)
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(200.0), time_features // 2)), persistent=False)
        self.inp = nn.Linear(dim, hidden)
        self.temb = nn.Sequential(nn.Linear(time_features, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth - 1))
        self.out = nn.Linear(hidden, dim)
        self.act = nn.SiLU()

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        if self.num_classes is None:
            return self._raw(x, t, None)
        y = current_labels() if y is None else y
        null = null_labels(x.shape[0], self.num_classes, x.device)
        if y is None:
            return self._raw(x, t, null)
        y = torch.as_tensor(y, device=x.device).long()
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"conditioning: {y.shape[0]} labels for a batch of {x.shape[0]}")
        if self.guidance_scale == 1.0:
            return self._raw(x, t, y)
        c, u = self._raw(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null])).chunk(2)
        return u + self.guidance_scale * (c - u)

    def _raw(self, x: Tensor, t: Tensor, y: Tensor | None) -> Tensor:
        ang = t.to(x.dtype)[:, None] * self.freqs[None]                    # (B, F/2)
        e = self.temb(torch.cat([ang.sin(), ang.cos()], -1))                # (B, H)
        if y is not None:
            e = e + self.cemb(y)
        h = self.act(self.inp(x) + e)
        for layer in self.layers:
            h = self.act(layer(h) + e)
        return self.out(h)


@register_model("toy_mlp", family="diffusion", injected=("dim",),
                description="MLP denoiser f(x, t) for 2-D toys (class-conditional with num_classes)")
def toy_mlp(dim: int = 2, hidden: Annotated[int, Field(ge=1)] = 128, depth: Annotated[int, Field(ge=1)] = 3,
            time_features: Annotated[int, Field(ge=2)] = 16,
            num_classes: Annotated[int, Field(ge=1)] | None = None) -> TimeMLP:
    return TimeMLP(dim, hidden, depth, time_features, num_classes)
