"""Progressive distillation (Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of
Diffusion Models", alg. 2). Rounds halve the step count: in each round the student learns to do
in one DDIM step what the previous round's model does in two. With x_t from the data and the
previous model's two steps t -> t' -> t'', the target is the x0 that one DDIM step t -> t''
must predict to land on the same point (eq. 8 of the paper):

    x0_target = (x_t'' - (sigma_t'' / sigma_t) x_t) / (alpha_t'' - (sigma_t'' / sigma_t) alpha_t)

and the loss is the truncated-SNR weighted max(alpha_t^2 / sigma_t^2, 1) |x0_hat - x0_target|^2.
Training calls are split evenly between the log2(start_steps / final_steps) rounds; the model of
every round is kept, so the student samples at each halving (64 -> 32 -> ... -> final_steps).
"""
from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import Tensor, nn
from typing_extensions import Annotated

from distill.families.diffusion.base import DiffusionContext, DiffusionMethod, frozen_copy, uniform_index
from distill.families.diffusion.process import Process, snr_weight
from distill.registry import register_method
from distill.teacher import Teacher


def two_step_target(process: Process, x_t: Tensor, x_t2: Tensor, t: Tensor, t2: Tensor) -> Tensor:
    """x0 such that one DDIM step from (x_t, t) to t2 lands on x_t2. x (B, ...), t, t2 (B,)."""
    shape = (-1, *([1] * (x_t.dim() - 1)))
    a, s = process.alpha_sigma(t.reshape(shape))
    a2, s2 = process.alpha_sigma(t2.reshape(shape))
    ratio = s2 / s.clamp(min=1e-8)
    return (x_t2 - ratio * x_t) / (a2 - ratio * a)


@register_method("progressive", family="diffusion", injected=("student", "teacher", "ctx"),
                 description="progressive distillation: halve the step count each round (Salimans & Ho 2022)")
class Progressive(DiffusionMethod):
    def __init__(self, student: nn.Module, teacher: Teacher, ctx: DiffusionContext,
                 start_steps: Annotated[int, Field(ge=2)] = 64, init_from_teacher: bool = True):
        super().__init__(student, teacher, ctx, init_from_teacher)
        final = ctx.student_steps
        ratio = start_steps / final
        if ratio < 2 or ratio != 2 ** round(math.log2(ratio)):
            raise ValueError(f"progressive: start_steps / student.steps must be a power of 2 >= 2 "
                             f"(given {start_steps} / {final})")
        self.start_steps, self.rounds = start_steps, round(math.log2(ratio))
        self.round = 0
        self.prev: nn.Module | None = None  # the previous round's model (round 0: the teacher)
        self.snapshots: dict[int, nn.Module] = {}
        self.weights = {"distill": 1.0}

    def steps_of_round(self, r: int) -> int:
        """The step count the student learns in round r."""
        return self.start_steps // 2 ** (r + 1)

    def _advance(self, r: int) -> None:
        while self.round < r:
            self.snapshots[self.steps_of_round(self.round)] = frozen_copy(self.student)
            self.prev = frozen_copy(self.student)
            self.round += 1

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        call = self.tick()
        if self.training:
            self._advance(min(call * self.rounds // max(1, self.ctx.total_steps), self.rounds - 1))
        x0, z = batch["x0"], batch["z"]
        n = self.steps_of_round(self.round)                           # student steps this round
        grid = Process.grid(2 * n, device=x0.device)                  # the previous model's grid
        j = uniform_index(n, x0.shape[0], x0.device)
        t, t1, t2 = grid[2 * j], grid[2 * j + 1], grid[2 * j + 2]
        x_t = self.process.noisy(x0, z, t)
        with torch.no_grad():
            if self.prev is None:
                x_t1 = self.teacher_step(x_t, t, t1)
                x_t2 = self.teacher_step(x_t1, t1, t2)
            else:
                x_t1 = self.process.ddim_step(*self.student_denoise(x_t, t, self.prev), t1)
                x_t2 = self.process.ddim_step(*self.student_denoise(x_t1, t1, self.prev), t2)
            target = two_step_target(self.process, x_t, x_t2, t, t2)
        x0_hat, _ = self.student_denoise(x_t, t)
        w = snr_weight(self.process, t).reshape(-1, *([1] * (x0.dim() - 1)))
        return {"distill": (w * (x0_hat - target) ** 2).flatten(1).sum(1).mean()}

    def finalize(self) -> None:
        self._advance(self.rounds - 1)
        self.snapshots[self.steps_of_round(self.round)] = frozen_copy(self.student)

    def sampling_net(self, steps: int) -> nn.Module:
        return self.snapshots.get(steps, self.student)
