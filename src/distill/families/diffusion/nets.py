"""Denoisers for 2-D toys: an MLP on (x, Fourier features of t)."""
from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import Tensor, nn
from typing_extensions import Annotated

from distill.registry import register_model


class TimeMLP(nn.Module):
    """f(x, t): x (B, D), t (B,) in [0, 1] -> (B, D). Time enters as sin/cos features added to every layer."""

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, time_features: int = 16):
        super().__init__()
        self.dim, self.hidden, self.depth = dim, hidden, depth
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(200.0), time_features // 2)), persistent=False)
        self.inp = nn.Linear(dim, hidden)
        self.temb = nn.Sequential(nn.Linear(time_features, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth - 1))
        self.out = nn.Linear(hidden, dim)
        self.act = nn.SiLU()

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        ang = t.to(x.dtype)[:, None] * self.freqs[None]                    # (B, F/2)
        e = self.temb(torch.cat([ang.sin(), ang.cos()], -1))                # (B, H)
        h = self.act(self.inp(x) + e)
        for layer in self.layers:
            h = self.act(layer(h) + e)
        return self.out(h)


@register_model("toy_mlp", family="diffusion", description="MLP denoiser f(x, t) for 2-D toys", injected=("dim",))
def toy_mlp(dim: int = 2, hidden: Annotated[int, Field(ge=1)] = 128, depth: Annotated[int, Field(ge=1)] = 3,
            time_features: Annotated[int, Field(ge=2)] = 16) -> TimeMLP:
    return TimeMLP(dim, hidden, depth, time_features)
