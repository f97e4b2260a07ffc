"""Reflow, then distil to one step (Liu, Gong, Liu 2022, "Flow Straight and Fast", eq. 1 on the
teacher's couplings; Liu et al. 2024, InstaFlow). The teacher's ODE maps noise z to a sample
x = ODE(z); the student learns the denoiser of the straight interpolation x_t = alpha_t x +
sigma_t z of these fixed pairs (for the flow process, the velocity z - x), so that its paths are
nearly straight and few Euler steps suffice. In the last `distill_fraction` of training it also
regresses its one-step output from pure noise onto x (the distillation stage of InstaFlow).

Class-conditional teachers: run under `unet.conditioning(y)` (any labels of the batch size), the
couplings are drawn with classes c uniform over the teacher's, x = ODE_teacher(z | c), and the
student learns each pair under its own class c; with labels None (or an unconditional teacher)
everything runs with the null class, as before.
"""
from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn
from typing_extensions import Annotated

from distill.families.diffusion.base import DiffusionContext, DiffusionMethod
from distill.families.diffusion.unet import conditioning
from distill.registry import register_method
from distill.teacher import Teacher


@torch.no_grad()
def teacher_couplings(method: DiffusionMethod, n: int, like: Tensor, seed: int,
                      chunk: int = 4096) -> tuple[Tensor, Tensor, Tensor | None]:
    """n pairs (z, ODE_teacher(z | y)), generated in chunks from a seeded generator: z (n, ...),
    x (n, ...) and their classes y (n,), drawn by `method.draw_labels` (None: unconditional pairs)."""
    g = torch.Generator().manual_seed(seed)
    y = method.draw_labels(n, g, like.device)
    zs, xs = [], []
    for i in range(0, n, chunk):
        z = torch.randn((min(chunk, n - i), *like.shape[1:]), generator=g).to(like)
        zs.append(z)
        with conditioning(None if y is None else y[i:i + z.shape[0]]):
            xs.append(method.teacher_sample(z))
    return torch.cat(zs), torch.cat(xs), y


def pick(pairs: tuple[Tensor, Tensor, Tensor | None], idx: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    """The pairs at idx (B,): z, x, and their labels (None for unconditional pairs)."""
    z, x, y = pairs
    return z[idx], x[idx], None if y is None else y[idx]


@register_method("reflow", family="diffusion", injected=("student", "teacher", "ctx"),
                 description="rectified-flow reflow on teacher couplings, then one-step distillation (InstaFlow)")
class Reflow(DiffusionMethod):
    def __init__(self, student: nn.Module, teacher: Teacher, ctx: DiffusionContext,
                 pairs: Annotated[int, Field(ge=1)] = 20000,
                 distill_fraction: Annotated[float, Field(ge=0, le=1)] = 0.3,
                 init_from_teacher: bool = True):
        super().__init__(student, teacher, ctx, init_from_teacher)
        self.n_pairs, self.distill_fraction = pairs, distill_fraction
        self.pairs: tuple[Tensor, Tensor, Tensor | None] | None = None
        self.weights = {"reflow": 1.0, "one_step": 1.0}

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        call = self.tick()
        like = batch["z"]
        if self.pairs is None:
            self.pairs = teacher_couplings(self, self.n_pairs, like, self.ctx.seed + 7919)
        idx = torch.randint(0, self.n_pairs, (like.shape[0],), device=like.device)
        z, x, y = pick(self.pairs, idx)
        t = torch.rand(like.shape[0], device=like.device)
        x_t = self.process.noisy(x, z, t)
        with conditioning(y):                        # each pair under the class it was drawn with
            out = self.student(x_t, t)
            target = self.process.target(x, z, self.ctx.student_param)
            terms = {"reflow": ((out - target) ** 2).flatten(1).sum(1).mean()}
            if call >= (1 - self.distill_fraction) * self.ctx.total_steps:
                x0_hat, _ = self.student_denoise(z, 1.0)
                terms["one_step"] = ((x0_hat - x) ** 2).flatten(1).sum(1).mean()
            else:
                terms["one_step"] = torch.zeros((), device=like.device)
        return terms
