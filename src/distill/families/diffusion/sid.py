"""Score identity distillation (Zhou et al. 2024, "Score identity Distillation: Exponentially Fast
Distillation of Pretrained Diffusion Models for One-Step Generation", SiD). Data-free: a one-step
generator G maps noise z to x_g = G(z); nothing reads the data. As in DMD, a fake denoiser f_psi is
trained online on the generator's samples (same code: `DMD.update_fake`, `fake_updates` steps per
generator step, its own optimiser). The generator loss is the score-identity form (SiD, eq. for
L~_theta, alpha-weighted), at x_t = alpha_t x_g + sigma_t eps with f_phi the frozen teacher's x0:

    L = (1 - alpha) |f_phi(x_t) - f_psi(x_t)|^2 + (f_phi(x_t) - f_psi(x_t))^T (f_psi(x_t) - x_g)
      = (f_phi - f_psi)^T ((f_phi - x_g) - alpha (f_phi - f_psi))

Unlike DMD, the gradient flows through x_t into both networks (their weights are held fixed for
this loss) as well as through x_g. The time weighting omega(t) / sigma_t^4 is replaced, as in the
authors' released training code, by 1 / mean|x_g - f_phi(x_t)| per sample (held constant: no
gradient through it); the loss itself, with that normalisation, is the same expression as theirs.
One difference remains: they draw the noise level from EDM's sigma schedule, t uniform on
[0, 0.8] of it; here t is uniform on [t_min, t_max] of the run's process. alpha = 1.2 is the
paper's default.
"""
from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn
from typing_extensions import Annotated

from distill.families.diffusion.base import DiffusionContext, held
from distill.families.diffusion.dmd import DMD
from distill.registry import register_method
from distill.teacher import Teacher


@register_method("sid", family="diffusion", injected=("student", "teacher", "ctx"),
                 description="score identity distillation: data-free one-step generator (SiD, Zhou et al. 2024)")
class SiD(DMD):
    def __init__(self, student: nn.Module, teacher: Teacher, ctx: DiffusionContext,
                 alpha: Annotated[float, Field(ge=0)] = 1.2,
                 fake_lr: Annotated[float, Field(gt=0)] = 1e-3, fake_updates: Annotated[int, Field(ge=1)] = 1,
                 t_min: Annotated[float, Field(ge=0, lt=1)] = 0.02, t_max: Annotated[float, Field(gt=0, le=1)] = 0.98,
                 init_from_teacher: bool = True):
        super().__init__(student, teacher, ctx, fake_lr=fake_lr, fake_updates=fake_updates, t_min=t_min, t_max=t_max,
                         init_from_teacher=init_from_teacher)
        self.alpha = alpha
        self.weights = {"sid": 1.0}

    def generator_terms(self, g: Tensor, z: Tensor) -> dict[str, Tensor]:
        t = self.sample_t(z.shape[0], z.device)
        x_t = self.process.noisy(g, torch.randn_like(g), t)                 # with grad through g
        with torch.enable_grad(), held(self._teacher.module) as teacher, held(self.fake):
            real = self.process.denoise(teacher(x_t, t), x_t, t, self.ctx.teacher_param)[0]
            fake = self.fake_denoise(x_t, t)
        with torch.no_grad():
            norm = (g - real).abs().flatten(1).mean(1).clamp(min=1e-4)    # (B,)
        diff = real - fake
        loss = (diff * ((real - g) - self.alpha * diff)).flatten(1).sum(1) / norm
        return {"sid": loss.mean()}
