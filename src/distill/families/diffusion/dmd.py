"""Distribution matching distillation (Yin et al. 2024, DMD, eq. 7-8; DMD2, sec. 4). A generator
G maps noise to samples; the gradient of KL(p_G || p_data), diffused to a random time t, is the
difference of two scores at x_t = alpha_t G(z) + sigma_t eps: the frozen teacher's ("real") and
that of a "fake" denoiser trained online on the generator's own samples. In x0 terms:

    grad = (x0_fake(x_t) - x0_real(x_t)) / mean|G(z) - x0_real(x_t)|
    L_dm = 1/2 |G(z) - stopgrad(G(z) - grad)|^2

The fake denoiser takes `fake_updates` steps per generator step (two time-scale update rule,
DMD2). `regression_weight` > 0 adds DMD's regression loss on teacher ODE pairs. With
`gen_steps` > 1 the generator is a few-step sampler trained by backward simulation (DMD2): its
input at step i is produced by running itself for i steps. `gan_weight` > 0 adds DMD2's GAN term
(sec. 4.3; gan.py): a discriminator head on the fake network's features (a TimeMLP's last hidden
layer, a UNet's mid-block) tells noised real data (the batch's x0: the one part of DMD that reads
data) from noised generator samples. The fake network's trunk learns from that classification loss
(weight `disc_weight`) together with its denoising loss, in its own update; the head is the method's
submodule, optimised by the engine on the term "disc" (on detached features); the generator gets
the non-saturating loss "gan" through the held fake network and head, with weight `gan_weight`.
The fake denoiser and its optimiser are saved in the method's state_dict (its extra state), so an
engine checkpoint resumes them too. Its updates run once per optimiser step (at the first micro-batch
of an accumulation window) and, with several processes, on gradients averaged over them, so that
every process keeps the same fake denoiser (it is outside the DDP-wrapped module tree).

Class-conditional teachers: run under `unet.conditioning(y)` with the batch's labels y (B,), the
generator, the teacher and the fake denoiser all see y for the generator's samples; the fake
denoiser's extra updates use a permutation of y; with the GAN term, the real data (the batch's
x0) are read with their labels y; the regression pairs carry their own uniformly drawn classes.
With labels None everything runs with the null class (unconditional), as before.
"""
from __future__ import annotations

import copy
import itertools

import torch
from pydantic import Field
from torch import Tensor, nn
from typing_extensions import Annotated

from distill.families.diffusion.base import DiffusionContext, DiffusionMethod, held
from distill.families.diffusion.gan import (Discriminator, FeatureTap, discriminator_loss, feature_site,
                                            generator_gan_loss)
from distill.families.diffusion.process import Process, call
from distill.families.diffusion.reflow import pick, teacher_couplings
from distill.families.diffusion.unet import conditioning, current_labels
from distill.registry import register_method
from distill.teacher import Teacher


def average_gradients(net: nn.Module) -> None:
    """Average `net`'s gradients over the processes (one all-reduce of the flattened gradients; a no-op
    in one process). The fake denoiser lives outside the DDP-wrapped module tree, so DDP does not
    reduce its gradients; averaged like this, every process takes the same step from the same weights
    and the copies stay equal (they start equal: copies of the teacher, or of the DDP-synced student)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return
    params = [p for p in net.parameters() if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    i = 0
    for p, g in zip(params, grads):
        p.grad = flat[i:i + g.numel()].view_as(p).clone()
        i += g.numel()


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
                 gan_weight: Annotated[float, Field(ge=0)] = 0.0, disc_weight: Annotated[float, Field(ge=0)] = 1.0,
                 init_from_teacher: bool = True):
        super().__init__(student, teacher, ctx, init_from_teacher)
        self.gan_weight, self.disc_weight = gan_weight, disc_weight
        self.fake_updates, self.regression_weight = fake_updates, regression_weight
        self.regression_pairs, self.gen_steps, self.t_min, self.t_max = regression_pairs, gen_steps, t_min, t_max
        # the fake denoiser starts as the teacher; it is kept out of the module tree so that the
        # engine's optimiser (generator only) never sees it; it has its own optimiser
        # (an analytic teacher without weights: a copy of the student, in the teacher's parameterisation)
        src = teacher.module if any(True for _ in teacher.module.parameters()) else student
        fake = copy.deepcopy(src).requires_grad_(True).train()
        self.__dict__["fake"] = fake
        self.__dict__["fake_opt"] = torch.optim.Adam(fake.parameters(), lr=fake_lr)
        self.pairs: tuple[Tensor, Tensor, Tensor | None] | None = None
        self._fake_step_of: int | None = None   # the optimiser step whose fake updates ran last
        self._fake_loss = torch.zeros(())
        self.weights = {"dm": 1.0, "regression": regression_weight}
        self._disc_feat: Tensor | None = None    # the head's features from this step's fake update (detached)
        if gan_weight > 0:
            self.site = feature_site(fake)
            p = next(fake.parameters())
            self.disc = Discriminator(self.site.width, self.site.spatial).to(p.device, p.dtype)
            self.weights.update(gan=gan_weight, disc=1.0)

    def trainable_parameters(self):
        if self.gan_weight > 0:  # the generator and the discriminator head: their losses touch disjoint weights
            return itertools.chain(self.student.parameters(), self.disc.parameters())
        return self.student.parameters()

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

    def _fake_step(self, g: Tensor, real: Tensor | None = None) -> Tensor:
        """One update of the fake denoiser on samples g; with real data (GAN term on), its trunk also
        learns the discriminator's classification loss. Returns the denoising loss."""
        t = self.sample_t(g.shape[0], g.device)
        eps = torch.randn_like(g)
        x_t = self.process.noisy(g, eps, t)
        if real is None:
            out = call(self.fake, x_t, t)
        else:
            out, feat = self._gan_pass(x_t, t, real)
        loss = ((out - self.process.target(g, eps, self.ctx.teacher_param)) ** 2).flatten(1).sum(1).mean()
        total = loss
        if real is not None:
            self._disc_feat = feat.detach()
            n = g.shape[0]
            fake_logits, real_logits = self.disc(feat).split([n, n])
            total = loss + self.disc_weight * discriminator_loss(real_logits, fake_logits)
        self.fake_opt.zero_grad(set_to_none=True)
        total.backward(inputs=list(self.fake.parameters()))   # the head is the engine's to optimise
        average_gradients(self.fake)
        self.fake_opt.step()
        return loss.detach()

    def _gan_pass(self, x_t: Tensor, t: Tensor, real: Tensor) -> tuple[Tensor, Tensor]:
        """The fake network on noised generator samples x_t (B, ...) and the batch's real data noised
        at fresh times, in one call: (its output on x_t (B, ...), features of both (2B, ...))."""
        tr = self.sample_t(real.shape[0], real.device)
        xr = self.process.noisy(real, torch.randn_like(real), tr)
        y = current_labels()    # the real data's labels are the batch's (those of the generator's samples)
        with FeatureTap(self.site) as tap, conditioning(None if y is None else torch.cat([y, y])):
            out = call(self.fake, torch.cat([x_t, xr]), torch.cat([t, tr]))
        return out[: x_t.shape[0]], tap.value

    def update_fake(self, g: Tensor, z: Tensor, real: Tensor | None = None) -> Tensor:
        """The fake denoiser's `fake_updates` steps for this generator step (two time-scale updates):
        the first on this batch's samples g (detached) and, with the GAN term, its real data; the rest
        on fresh samples. Returns the first loss. They run at the first micro-batch of each optimiser
        step only (`step_index`), so grad_accum does not multiply them."""
        if not self.training:
            return torch.zeros((), device=z.device)
        if self.step_index == self._fake_step_of:     # a later micro-batch of this optimiser step
            return self._fake_loss
        y = current_labels()
        with torch.enable_grad():
            fake_loss = self._fake_step(g.detach(), real)
            for _ in range(self.fake_updates - 1):
                y2 = None if y is None else y[torch.randperm(y.shape[0], device=y.device)]
                with conditioning(y2):
                    with torch.no_grad():
                        g2 = self.generate(torch.randn_like(z))
                    self._fake_step(g2)
        self._fake_step_of, self._fake_loss = self.step_index, fake_loss
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

    def gan_terms(self, g: Tensor, real: Tensor) -> dict[str, Tensor]:
        """DMD2's GAN terms: "disc", the head's logistic loss on this step's (detached) features of noised
        real data and samples; "gan", the generator's non-saturating loss through the held fake network."""
        n = g.shape[0]
        feat = self._disc_feat
        if feat is None:  # no fake update ran (eval mode): features from a pass that trains nothing
            with torch.no_grad():
                t = self.sample_t(n, g.device)
                feat = self._gan_pass(self.process.noisy(g, torch.randn_like(g), t), t, real)[1]
        self._disc_feat = None
        fake_logits, real_logits = self.disc(feat.detach()).split([n, n])
        t = self.sample_t(n, g.device)
        x_t = self.process.noisy(g, torch.randn_like(g), t)                 # with grad through g
        with torch.enable_grad(), held(self.fake), held(self.disc), FeatureTap(self.site) as tap:
            call(self.fake, x_t, t)
            gen_logits = self.disc(tap.value)
        return {"disc": discriminator_loss(real_logits, fake_logits), "gan": generator_gan_loss(gen_logits)}

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        self.tick(batch)
        z = batch["z"]
        g = self.generate(z)                                               # (B, ...)
        real = batch["x0"] if self.gan_weight > 0 else None
        fake_loss = self.update_fake(g, z, real)
        terms = self.generator_terms(g, z)
        if real is not None:
            terms.update(self.gan_terms(g, real))
        if self.regression_weight > 0:
            if self.pairs is None:
                self.pairs = teacher_couplings(self, self.regression_pairs, z, self.ctx.seed + 104729)
            idx = torch.randint(0, self.regression_pairs, (z.shape[0],), device=z.device)
            pz, px, py = pick(self.pairs, idx)
            with conditioning(py):
                terms["regression"] = ((self.student_denoise(pz, 1.0)[0] - px) ** 2).flatten(1).sum(1).mean()
        # the fake denoiser's loss is logged, not optimised by the engine (weight 0)
        terms["fake"] = fake_loss
        self.weights["fake"] = 0.0
        return terms

    def to(self, *args, **kwargs):
        out = super().to(*args, **kwargs)
        self.fake.to(*args, **kwargs)
        return out

    # the fake denoiser and its optimiser live outside the module tree; they travel in the method's
    # state_dict (key "_extra_state"), so a checkpoint resumes them with the generator and the head
    def get_extra_state(self) -> dict:
        return {"fake": self.fake.state_dict(), "fake_opt": self.fake_opt.state_dict()}

    def set_extra_state(self, state: dict) -> None:
        self.fake.load_state_dict(state["fake"])
        self.fake_opt.load_state_dict(state["fake_opt"])
