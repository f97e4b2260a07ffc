"""Consistency distillation with a skipping-step solver (Song et al. 2023, "Consistency Models",
alg. 2; Luo et al. 2023, LCM, sec. 4.3). The consistency function is the student's x0 prediction
f(x, t) = x0_hat(x, t), which is the identity at t = 0 under every parameterisation. From x_t on
the data's noising path, one teacher DDIM step spans k grid intervals to s < t; the student at
(x_t, t) is pulled to an EMA copy of itself at (x_s, s):

    L = |f_theta(x_t, t) - f_ema(ODE_teacher(x_t, t -> s), s)|^2

The student samples with multistep consistency sampling (denoise, re-noise, repeat).
"""
from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn
from typing_extensions import Annotated

from distill.families.diffusion.base import DiffusionContext, DiffusionMethod, frozen_copy, uniform_index
from distill.families.diffusion.process import Process
from distill.registry import register_method
from distill.teacher import Teacher


@register_method("consistency", family="diffusion", injected=("student", "teacher", "ctx"),
                 description="consistency distillation with a skipping-step teacher solver (CD, LCM)")
class Consistency(DiffusionMethod):
    sampler = "renoise"

    def __init__(self, student: nn.Module, teacher: Teacher, ctx: DiffusionContext,
                 grid_steps: Annotated[int, Field(ge=2)] = 64, skip: Annotated[int, Field(ge=1)] = 4,
                 ema: Annotated[float, Field(ge=0, lt=1)] = 0.95, init_from_teacher: bool = True):
        super().__init__(student, teacher, ctx, init_from_teacher)
        if skip >= grid_steps:
            raise ValueError(f"consistency: skip ({skip}) must be below grid_steps ({grid_steps})")
        self.grid_steps, self.skip, self.ema = grid_steps, skip, ema
        self.target = frozen_copy(student)
        self.weights = {"consistency": 1.0}

    @torch.no_grad()
    def _update_target(self) -> None:
        for p_t, p in zip(self.target.parameters(), self.student.parameters()):
            p_t.mul_(self.ema).add_(p.detach(), alpha=1 - self.ema)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.tick() > 0 and self.training:
            self._update_target()   # after the previous optimiser step
        x0, z = batch["x0"], batch["z"]
        grid = Process.grid(self.grid_steps, device=x0.device)
        i = uniform_index(self.grid_steps - self.skip + 1, x0.shape[0], x0.device)
        t, s = grid[i], grid[i + self.skip]
        x_t = self.process.noisy(x0, z, t)
        with torch.no_grad():
            x_s = self.teacher_step(x_t, t, s)
            target, _ = self.student_denoise(x_s, s, self.target)
        pred, _ = self.student_denoise(x_t, t)
        return {"consistency": ((pred - target) ** 2).flatten(1).sum(1).mean()}
