"""Flat trajectory distillation (FTD; Du et al., CVPR 2023): MTT whose experts are trained with
sharpness-aware minimisation (flat trajectories, less accumulated error), and whose final set is an
exponential moving average of the synthetic images over the iterations. The EMA's decay warms up as
min(ema_decay, (1 + t) / (10 + t)) so that on short runs the initial images do not dominate it."""
from __future__ import annotations

import torch
from pydantic import Field
from typing_extensions import Annotated

from distill.families.dataset.base import DistillContext, inherit_params, SyntheticSet
from distill.families.dataset.mtt import TrajectoryMatching
from distill.registry import register_method


@register_method("ftd", family="dataset", description="flat trajectories: SAM experts + EMA images (FTD, CVPR 2023)",
                 injected=("ctx",))
@inherit_params
class FTD(TrajectoryMatching):
    def __init__(self, ctx: DistillContext, sam_rho: Annotated[float, Field(gt=0)] = 0.01,
                 ema_decay: Annotated[float, Field(ge=0, lt=1)] = 0.99, **kw):
        super().__init__(ctx, **kw)
        self.sam_rho, self.ema_decay = sam_rho, ema_decay

    def setup(self) -> None:
        super().setup()
        self.ema = self.images.detach().clone()

    def step(self, it: int, iterations: int) -> dict[str, float]:
        out = super().step(it, iterations)
        with torch.no_grad():
            decay = min(self.ema_decay, (1 + it) / (10 + it))  # warm-up: the start does not dominate short runs
            self.ema.mul_(decay).add_(self.images.detach(), alpha=1 - decay)
        return out

    def result(self) -> SyntheticSet:
        return SyntheticSet(self.ema.clone(), self.labels.clone(), float(self.syn_lr))

    def state_dict(self) -> dict:
        return {**super().state_dict(), "ema": self.ema.cpu()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.ema.copy_(state["ema"])
