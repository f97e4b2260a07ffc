"""Distribution matching distillation (Yin et al. 2024, DMD, eq. 7-8; DMD2, sec. 4). A generator
G maps noise to samples; the gradient of KL(p_G || p_data), diffused to a random time t, is the
difference of two scores at x_t = alpha_t G(z) + sigma_t eps: the frozen teacher's ("real") and
that of a "fake" denoiser trained online on the generator's own samples. In x0 terms:

    grad = (x0_fake(x_t) - x0_real(x_t)) / mean|G(z) - x0_real(x_t)|
    L_dm = 1/2 |G(z) - stopgrad(G(z) - grad)|^2

The fake denoiser takes `fake_updates` steps per generator step (two time-scale update rule,
DMD2). `regression_weight` > 0 adds DMD's regression loss on teacher ODE pairs. With
`gen_steps` > 1 the generator is a few-step sampler trained by backward simulation (DMD2): its
input at step i is produced by running itself for i steps. Not done here: DMD2's GAN term.
"""
from __future__ import annotations

import copy

import torch
from pydantic import Field
from torch import Tensor, nn
from typing_extensions import Annotated

from distill.families.diffusion.base import DiffusionContext, DiffusionMethod
from distill.families.diffusion.process import Process, call
from distill.families.diffusion.reflow import teacher_couplings
from distill.registry import register_method
from distill.teacher import Teacher


@register_method("dmd", family="diffusion", injected=("student", "teacher", "ctx"),
                 description="distribution matching distillation with a fake-score network (DMD, DMD2)")
class DMD(DiffusionMethod):
    sampler = "renoise"

    def __init__(self, student: nn.Module, teacher: Teacher, ctx: DiffusionContext,
                 fake_lr: Annotated[float, Field(gt=0)] = 1e-3, fake_updates: Annotated[int, Field(ge=1)] = 5,
                 regression_weight: Annotated[float, Field(ge=0)] = 0.0,
                 regression_pairs: Annotated[int, Field(ge=1)] = 4096,
                 gen_steps: Annotated[int, Field(ge=1)] = 1,
                 t_min: Annotated[float, Field(ge=0, lt=1)] = 0.02, t_max: Annotated[float, Field(gt=0, le=1)] = 0.98,
                 init_from_teacher: bool = True):
        super().__init__(student, teacher, ctx, init_from_teacher)
        self.fake_updates, self.regression_weight = fake_updates, regression_weight
        self.regression_pairs, self.gen_steps, self.t_min, self.t_max = regression_pairs, gen_steps, t_min, t_max
        # the fake denoiser starts as the teacher; it is kept out of the module tree so that the
        # engine's optimiser (generator only) never sees it; it has its own optimiser
        # (an analytic teacher without weights: a copy of the student, in the teacher's parameterisation)
        src = teacher.module if any(True for _ in teacher.module.parameters()) else student
        fake = copy.deepcopy(src).requires_grad_(True).train()
        self.__dict__["fake"] = fake
        self.__dict__["fake_opt"] = torch.optim.Adam(fake.parameters(), lr=fake_lr)
        self.pairs: tuple[Tensor, Tensor] | None = None
        self.weights = {"dm": 1.0, "regression": regression_weight}

    def generate(self, z: Tensor) -> Tensor:
        """Generator samples (with grad). gen_steps > 1: a random step of the generator's own sampler."""
        grid = Process.grid(self.gen_steps, device=z.device)
        if self.gen_steps == 1:
            return self.student_denoise(z, grid[0])[0]
        i = int(torch.randint(0, self.gen_steps, ()))
        x = z
        with torch.no_grad():
            for k in range(i):
                x0, _ = self.student_denoise(x, grid[k])
                x = self.process.noisy(x0, torch.randn_like(x), grid[k + 1])
        return self.student_denoise(x, grid[i])[0]

    def _fake_step(self, g: Tensor) -> Tensor:
        t = self.sample_t(g.shape[0], g.device)
        eps = torch.randn_like(g)
        out = call(self.fake, self.process.noisy(g, eps, t), t)
        loss = ((out - self.process.target(g, eps, self.ctx.teacher_param)) ** 2).flatten(1).sum(1).mean()
        self.fake_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.fake_opt.step()
        return loss.detach()

    def update_fake(self, g: Tensor, z: Tensor) -> Tensor:
        """The fake denoiser's `fake_updates` steps for this generator step (two time-scale updates):
        the first on this batch's samples g (detached), the rest on fresh ones. Returns the first loss."""
        if not self.training:
            return torch.zeros((), device=z.device)
        with torch.enable_grad():
            fake_loss = self._fake_step(g.detach())
            for _ in range(self.fake_updates - 1):
                with torch.no_grad():
                    g2 = self.generate(torch.randn_like(z))
                self._fake_step(g2)
        return fake_loss

    def sample_t(self, n: int, device) -> Tensor:
        return self.t_min + (self.t_max - self.t_min) * torch.rand(n, device=device)

    def fake_denoise(self, x_t: Tensor, t: Tensor) -> Tensor:
        """The fake denoiser's x0 prediction at (x_t, t)."""
        return self.process.denoise(call(self.fake, x_t, t), x_t, t, self.ctx.teacher_param)[0]

    def generator_terms(self, g: Tensor, z: Tensor) -> dict[str, Tensor]:
        """DMD's distribution matching term for generator samples g (with grad)."""
        t = self.sample_t(z.shape[0], z.device)
        x_t = self.process.noisy(g.detach(), torch.randn_like(g), t)
        with torch.no_grad():
            real = self.teacher_denoise(x_t, t)[0]
            fake = self.fake_denoise(x_t, t)
            norm = (g - real).abs().flatten(1).mean(1).clamp(min=1e-4).reshape(-1, *([1] * (g.dim() - 1)))
            grad = (fake - real) / norm
        return {"dm": 0.5 * ((g - (g - grad).detach()) ** 2).flatten(1).sum(1).mean()}

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        self.tick()
        z = batch["z"]
        g = self.generate(z)                                               # (B, ...)
        fake_loss = self.update_fake(g, z)
        terms = self.generator_terms(g, z)
        if self.regression_weight > 0:
            if self.pairs is None:
                self.pairs = teacher_couplings(self, self.regression_pairs, z, self.ctx.seed + 104729)
            idx = torch.randint(0, self.regression_pairs, (z.shape[0],), device=z.device)
            pz, px = self.pairs[0][idx], self.pairs[1][idx]
            terms["regression"] = ((self.student_denoise(pz, 1.0)[0] - px) ** 2).flatten(1).sum(1).mean()
        # the fake denoiser's loss is logged, not optimised by the engine (weight 0)
        terms["fake"] = fake_loss
        self.weights["fake"] = 0.0
        return terms

    def to(self, *args, **kwargs):
        out = super().to(*args, **kwargs)
        self.fake.to(*args, **kwargs)
        return out
