"""Consistency distillation with a skipping-step solver (Song et al. 2023, "Consistency Models",
alg. 2; Luo et al. 2023, LCM, sec. 4.3). The consistency function is the student's x0 prediction
under the boundary-condition parameterisation of Song et al. (app. C):

    f(x, t) = c_skip(t) x + c_out(t) x0_hat(x, t)        (x0_hat: the student's, in its parameterisation)
    c_skip(t) = sd^2 / (tau^2 + sd^2),  c_out(t) = tau / sqrt(tau^2 + sd^2),  tau = timestep_scaling * 999 t

so f(x, 0) = x exactly (c_skip = 1, c_out = 0 at the grid's last time t = 0, Song's epsilon), whatever
the network outputs. Without it an x0 student has no anchor: every constant function is
self-consistent and the samples collapse to a point. This is LCM's discrete-time form (diffusers'
`LCMScheduler.get_scalings_for_boundary_condition_discrete`, t shown as t * 999 like a DDPM timestep):
Song's c_out divided by sd, so that f tends to the student's x0_hat away from t = 0 and a student
initialised from the teacher starts at the teacher's denoiser. sd = sigma_data.

From x_t on the data's noising path, one teacher DDIM step spans k grid intervals to s < t; the
student at (x_t, t) is pulled to an EMA copy of itself at (x_s, s):

    L = |f_theta(x_t, t) - f_ema(ODE_teacher(x_t, t -> s), s)|^2

The EMA moves once per optimiser step (at the first training call after it; the runner passes the
step count in the batch, "step"), not once per micro-batch. The student samples with multistep
consistency sampling (f, re-noise, repeat).
"""
from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn
from typing_extensions import Annotated

from distill.families.diffusion.base import DiffusionContext, DiffusionMethod, frozen_copy, uniform_index
from distill.families.diffusion.process import Process, _bcast, renoise_sample
from distill.families.diffusion.unet import TIMESTEPS, conditioning
from distill.registry import register_method
from distill.teacher import Teacher


def boundary_scalings(t: Tensor, sigma_data: float = 0.5, timestep_scaling: float = 10.0) -> tuple[Tensor, Tensor]:
    """(c_skip, c_out) at times t (any shape) in [0, 1]: c_skip(0) = 1, c_out(0) = 0 exactly."""
    tau = t * ((TIMESTEPS - 1) * timestep_scaling)
    sd2 = sigma_data * sigma_data
    return sd2 / (tau * tau + sd2), tau / (tau * tau + sd2).sqrt()


@register_method("consistency", family="diffusion", injected=("student", "teacher", "ctx"),
                 description="consistency distillation with a skipping-step teacher solver (CD, LCM)")
class Consistency(DiffusionMethod):
    sampler = "renoise"

    def __init__(self, student: nn.Module, teacher: Teacher, ctx: DiffusionContext,
                 grid_steps: Annotated[int, Field(ge=2)] = 64, skip: Annotated[int, Field(ge=1)] = 4,
                 ema: Annotated[float, Field(ge=0, lt=1)] = 0.95,
                 sigma_data: Annotated[float, Field(gt=0)] = 0.5,
                 timestep_scaling: Annotated[float, Field(gt=0)] = 10.0, init_from_teacher: bool = True):
        super().__init__(student, teacher, ctx, init_from_teacher)
        if skip >= grid_steps:
            raise ValueError(f"consistency: skip ({skip}) must be below grid_steps ({grid_steps})")
        self.grid_steps, self.skip, self.ema = grid_steps, skip, ema
        self.sigma_data, self.timestep_scaling = sigma_data, timestep_scaling
        self.target = frozen_copy(student)
        self._target_step = 0          # the optimiser step the EMA target has taken in
        self.weights = {"consistency": 1.0}

    def consistency_fn(self, x: Tensor, t: Tensor | float, net: nn.Module | None = None) -> Tensor:
        """f(x, t) of the student (or `net`, e.g. the EMA target): x (B, ...), t (B,) or scalar -> (B, ...)."""
        x0_hat, _ = self.student_denoise(x, t, net)
        c_skip, c_out = boundary_scalings(_bcast(t, x), self.sigma_data, self.timestep_scaling)
        return c_skip * x + c_out * x0_hat

    @torch.no_grad()
    def _update_target(self) -> None:
        for p_t, p in zip(self.target.parameters(), self.student.parameters()):
            p_t.mul_(self.ema).add_(p.detach(), alpha=1 - self.ema)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        self.tick(batch)
        if self.training and self.step_index != self._target_step:
            self._update_target()      # once per optimiser step, at the first call after it
            self._target_step = self.step_index
        x0, z = batch["x0"], batch["z"]
        grid = Process.grid(self.grid_steps, device=x0.device)
        i = uniform_index(self.grid_steps - self.skip + 1, x0.shape[0], x0.device)
        t, s = grid[i], grid[i + self.skip]
        x_t = self.process.noisy(x0, z, t)
        with torch.no_grad():
            x_s = self.teacher_step(x_t, t, s)
            target = self.consistency_fn(x_s, s, self.target)
        pred = self.consistency_fn(x_t, t)
        return {"consistency": ((pred - target) ** 2).flatten(1).sum(1).mean()}

    @torch.no_grad()
    def sample(self, z: Tensor, steps: int, *, return_traj: bool = False, generator: torch.Generator | None = None,
               y: Tensor | None = None):
        """Multistep consistency sampling with f (Song et al. 2023, alg. 1); y (B,): class labels."""
        if y is not None:
            with conditioning(y):
                return self.sample(z, steps, return_traj=return_traj, generator=generator)
        if return_traj:
            return super().sample(z, steps, return_traj=True)
        was = self.student.training
        self.student.eval()
        try:   # f is an x0 output: read it under "x0"
            return renoise_sample(self.consistency_fn, self.process, z, steps, "x0", generator=generator)
        finally:
            self.student.train(was)
