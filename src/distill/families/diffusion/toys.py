"""2-D toy distributions, sampled on the fly: two moons, a ring of 8 Gaussians, a checkerboard.
Each is scaled to a spread of about 1 per coordinate, the scale of the N(0, I) noise. Each also has
class labels (`sample_labeled`), for class-conditional teachers: the moon (2 classes), the Gaussian
of the ring (8), the column of the checkerboard (4)."""
from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor
from typing_extensions import Annotated

from distill.registry import register_dataset

ToyName = Literal["moons", "8gaussians", "checkerboard"]


class Toy:
    """A sampler of a 2-D distribution: `sample(n, generator) -> (n, 2)`; `sample_labeled` -> ((n, 2), (n,))."""

    dim = 2
    CLASSES = {"moons": 2, "8gaussians": 8, "checkerboard": 4}

    def __init__(self, name: ToyName = "moons", noise: float = 0.05):
        if name not in ("moons", "8gaussians", "checkerboard"):
            raise ValueError(f"unknown toy {name!r}")
        self.name, self.noise = name, noise

    def __repr__(self) -> str:
        return f"Toy({self.name!r})"

    @property
    def num_classes(self) -> int:
        return self.CLASSES[self.name]

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.sample_labeled(n, generator)[0]

    def sample_labeled(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Points (n, 2) and their classes (n,) long; the same random draws as `sample`."""
        g = generator
        if self.name == "moons":
            u = torch.rand(n, generator=g) * math.pi
            upper = torch.rand(n, generator=g) < 0.5
            x = torch.where(upper, torch.cos(u), 1 - torch.cos(u))
            y = torch.where(upper, torch.sin(u), 0.5 - torch.sin(u))
            pts = torch.stack([x - 0.5, y - 0.25], 1) * torch.tensor([1.0, 2.0])
            return pts + self.noise * torch.randn(n, 2, generator=g), (~upper).long()
        if self.name == "8gaussians":
            label = torch.randint(0, 8, (n,), generator=g)
            k = label.float() * (2 * math.pi / 8)
            centres = torch.stack([torch.cos(k), torch.sin(k)], 1) * 1.5
            return centres + max(self.noise, 0.02) * 2 * torch.randn(n, 2, generator=g), label
        # checkerboard on [-2, 2]^2: 8 of 16 unit squares, scaled by 0.75
        x1 = torch.rand(n, generator=g) * 4 - 2
        x2 = torch.rand(n, generator=g) - torch.randint(0, 2, (n,), generator=g).float() * 2
        x2 = x2 + (torch.floor(x1) % 2)
        return torch.stack([x1, x2], 1) * 0.75, (torch.floor(x1).long() + 2).clamp(0, 3)


@register_dataset("toy2d", family="diffusion", description="2-D toy distributions (moons, 8gaussians, checkerboard)")
def toy2d(name: ToyName = "moons", noise: Annotated[float, Field(ge=0)] = 0.05) -> Toy:
    return Toy(name, noise)
