"""Distribution matching (DM; Zhao & Bilen, WACV 2023).

Each iteration samples a fresh randomly initialised network (not trained) and, per class, matches
the mean embedding of augmented real and synthetic images (same DSA draw on both):
    L = sum_c || mean_i psi(A(x_real_c,i)) - mean_j psi(A(s_c,j)) ||^2      (eq. 4)
"""
from __future__ import annotations

import torch
from pydantic import Field
from typing_extensions import Annotated

from distill.families.dataset.augment import DEFAULT_STRATEGY, check_strategy, dsa
from distill.families.dataset.base import DistillContext, ImageMethod, embed
from distill.registry import register_method


def mean_embedding_loss(fr: torch.Tensor, fs: torch.Tensor) -> torch.Tensor:
    """|| mean(fr) - mean(fs) ||^2 for features (Br, D) and (Bs, D)."""
    return ((fr.mean(0) - fs.mean(0)) ** 2).sum()


@register_method("dm", family="dataset", description="distribution matching with random networks (DM, WACV 2023)",
                 injected=("ctx",))
class DM(ImageMethod):
    def __init__(self, ctx: DistillContext, batch_real: Annotated[int, Field(ge=1)] = 256,
                 lr_img: Annotated[float, Field(gt=0)] = 1.0, init: str = "real", augment: bool = True,
                 strategy: str = DEFAULT_STRATEGY):
        super().__init__(ctx, lr_img=lr_img, init=init)
        self.batch_real, self.augment, self.strategy = batch_real, augment, check_strategy(strategy)

    def class_loss(self, net: torch.nn.Module, c: int) -> torch.Tensor:
        xr, xs = self.ctx.real(c, self.batch_real), self.class_images(c)
        if self.augment:
            seed = self.ctx.rand_int(2**31 - 1)
            xr, xs = dsa(xr, seed, self.strategy), dsa(xs, seed, self.strategy)
        with torch.no_grad():
            fr = embed(net, xr)
        return mean_embedding_loss(fr, embed(net, xs))

    def step(self, it: int, iterations: int) -> dict[str, float]:
        return self.random_net_step(it, "dm")
