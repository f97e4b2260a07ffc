"""Attention matching (DataDAM; Sajedi et al., ICCV 2023).

Like DM, each iteration samples a fresh random network; per class, it matches the mean spatial
attention map of every block (a = mean over channels of |f|^p, flattened and L2-normalised per
image) between augmented real and synthetic images, plus the mean final embedding (MMD with a
linear kernel) weighted by `mmd_weight`:
    L = sum_c [ sum_l || E_r a_l - E_s a_l ||^2 + mmd_weight || E_r psi - E_s psi ||^2 ]
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from typing_extensions import Annotated

from distill.families.dataset.augment import DEFAULT_STRATEGY, check_strategy, dsa
from distill.families.dataset.base import DistillContext, ImageMethod
from distill.families.dataset.dm import mean_embedding_loss
from distill.registry import register_method


def attention_map(f: Tensor, power: float = 4.0) -> Tensor:
    """(B, C, H, W) -> (B, H*W): mean over channels of |f|^power, L2-normalised per image."""
    return F.normalize(f.abs().pow(power).mean(1).flatten(1), dim=1)


def block_outputs(net: nn.Module, x: Tensor) -> tuple[list[Tensor], Tensor]:
    """Outputs of every activation of a `features` stack (ConvNet), and the final embedding (B, D)."""
    maps, h = [], x
    for layer in net.features:
        h = layer(h)
        if isinstance(layer, (nn.ReLU, nn.LeakyReLU)):
            maps.append(h)
    return maps, h.flatten(1)


@register_method("datadam", family="dataset", description="attention-map matching across layers (DataDAM, ICCV 2023)",
                 injected=("ctx",))
class DataDAM(ImageMethod):
    def __init__(self, ctx: DistillContext, batch_real: Annotated[int, Field(ge=1)] = 256,
                 lr_img: Annotated[float, Field(gt=0)] = 1.0, power: Annotated[float, Field(gt=0)] = 4.0,
                 mmd_weight: Annotated[float, Field(ge=0)] = 0.01, init: str = "real", augment: bool = True,
                 strategy: str = DEFAULT_STRATEGY):
        super().__init__(ctx, lr_img=lr_img, init=init)
        self.batch_real, self.power, self.mmd_weight = batch_real, power, mmd_weight
        self.augment, self.strategy = augment, check_strategy(strategy)

    def class_loss(self, net: nn.Module, c: int) -> Tensor:
        xr, xs = self.ctx.real(c, self.batch_real), self.class_images(c)
        if self.augment:
            seed = self.ctx.rand_int(2**31 - 1)
            xr, xs = dsa(xr, seed, self.strategy), dsa(xs, seed, self.strategy)
        with torch.no_grad():
            mr, er = block_outputs(net, xr)
        ms, es = block_outputs(net, xs)
        att = sum(((attention_map(a, self.power).mean(0) - attention_map(b, self.power).mean(0)) ** 2).sum()
                  for a, b in zip(mr, ms))
        return att + self.mmd_weight * mean_embedding_loss(er, es)

    def step(self, it: int, iterations: int) -> dict[str, float]:
        return self.random_net_step(it, "attention")
