"""Guidance distillation (Meng et al. 2023, "On Distillation of Guided Diffusion Models", stage one;
the adapter variant after Jensen et al. 2025, "Efficient Distillation of Classifier-Free Guidance
using Adapters", AGD). The teacher is class-conditional with classifier-free guidance: at guidance
weight w its output is u + w (c - u), c the conditional and u the null-class output, two network
evaluations per step. The student takes w as an extra input and learns the guided output in one
evaluation, for w ~ U(w_min, w_max), on the data's noising path (labels from the batch's "y", or
from `unet.conditioning`):

    L = |out_student(x_t, t, y, w) - (u + w (c - u))|^2      (in the teacher's parameterisation)

How w enters the student (forward hooks, so any denoiser works unchanged):
- variant "full": w's Fourier features go through a small MLP added to the output of the time
  embedding (`embed_module`, found for toy_mlp and the UNet); the whole student trains (from the
  teacher's weights; the added layer starts at zero, so training starts at the conditional output).
- variant "adapter": the student is the teacher, frozen; small bottleneck adapters on the outputs
  of `adapter_modules` (the hidden layers of toy_mlp, the resnets' second convolution of the UNet)
  add up(SiLU(down(h) + W phi(w))), up zero-initialised; only the adapters and w's encoder train.

The student samples with the same step count as the teacher at half the network evaluations.
`evaluate` reports, for every w in eval_scales and step count k: the SWD of the student's guided
samples (balanced labels) to the teacher's guided samples at its full step count (same noise,
labels, w), the class accuracy of the samples (1-NN against labelled data), and both at k for the
teacher too, with sampling times.
"""
from __future__ import annotations

import contextlib
import math
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn
from typing_extensions import Annotated

from distill.eval.distributions import sliced_wasserstein
from distill.families.diffusion.base import DiffusionContext, DiffusionMethod
from distill.families.diffusion.process import ddim_sample
from distill.families.diffusion.unet import conditioning, current_labels
from distill.registry import register_method
from distill.teacher import Teacher

EMBED_MODULES = ("temb", "unet.time_embedding")


class WEncoder(nn.Module):
    """phi(w): w (B,) -> (B, width) from sin/cos features of w."""

    def __init__(self, width: int = 64, features: int = 16, w_max: float = 10.0):
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(100.0), features // 2)) / w_max,
                             persistent=False)
        self.net = nn.Sequential(nn.Linear(features, width), nn.SiLU())
        self.width = width

    def forward(self, w: Tensor) -> Tensor:
        ang = w[:, None] * self.freqs[None]
        return self.net(torch.cat([ang.sin(), ang.cos()], -1))


class Adapter(nn.Module):
    """delta(h, phi(w)) = up(SiLU(down(h) + W phi(w))) over the channel dim 1 of h (B, C, ...); up starts at 0."""

    def __init__(self, channels: int, w_width: int, rank: int):
        super().__init__()
        self.down, self.wproj, self.up = nn.Linear(channels, rank), nn.Linear(w_width, rank), nn.Linear(rank, channels)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: Tensor, wf: Tensor) -> Tensor:
        hc = h.movedim(1, -1)                                               # (B, ..., C)
        wp = self.wproj(wf).reshape(wf.shape[0], *([1] * (hc.dim() - 2)), -1)
        return self.up(torch.nn.functional.silu(self.down(hc) + wp)).movedim(-1, 1)


def out_channels(module: nn.Module) -> int:
    """The channel count of a module's output: its last Linear's out_features or Conv's out_channels."""
    last = None
    for m in module.modules():
        if isinstance(m, nn.Linear):
            last = m.out_features
        elif isinstance(m, nn.modules.conv._ConvNd):
            last = m.out_channels
    if last is None:
        raise ValueError(f"guidance: cannot tell the output width of {type(module).__name__}")
    return last


def default_adapter_modules(net: nn.Module) -> list[str]:
    names = [n for n, m in net.named_modules() if isinstance(m, nn.Linear) and (n == "inp" or n.startswith("layers."))]
    names = names or [n for n, _ in net.named_modules() if n.endswith("conv2") and ".resnets." in n]
    if not names:
        raise ValueError("guidance: no default adapter_modules for this denoiser; name them (module names)")
    return names


@register_method("guidance", family="diffusion", injected=("student", "teacher", "ctx"),
                 description="guidance distillation: a w-conditioned student gives the CFG output in one pass "
                             "(Meng et al. 2023; variant=adapter: AGD-style adapters on a frozen base)")
class Guidance(DiffusionMethod):
    def __init__(self, student: nn.Module, teacher: Teacher, ctx: DiffusionContext,
                 variant: Literal["full", "adapter"] = "full",
                 w_min: Annotated[float, Field(ge=0)] = 1.0, w_max: Annotated[float, Field(ge=0)] = 5.0,
                 eval_scales: list[float] = [1.0, 3.0],  # noqa: B006 (read only)
                 label_drop: Annotated[float, Field(ge=0, le=1)] = 0.1,
                 w_width: Annotated[int, Field(ge=1)] = 64, adapter_rank: Annotated[int, Field(ge=1)] = 16,
                 embed_module: str | None = None, adapter_modules: list[str] | None = None,
                 t_min: Annotated[float, Field(ge=0, lt=1)] = 1e-3, init_from_teacher: bool = True):
        super().__init__(student, teacher, ctx, init_from_teacher or variant == "adapter")
        if w_max < w_min:
            raise ValueError(f"guidance: w_max ({w_max}) must be >= w_min ({w_min})")
        self.num_classes = getattr(teacher.module, "num_classes", None)
        if self.num_classes is None:
            raise ValueError("guidance: needs a class-conditional teacher (a denoiser with num_classes, e.g. "
                             "toy_mlp with num_classes and teacher.labels: true)")
        if variant == "adapter" and not self.initialised_from_teacher:
            raise ValueError("guidance: variant 'adapter' needs the student to be the teacher's architecture "
                             "(its frozen base is the teacher's weights)")
        self.variant, self.w_min, self.w_max, self.eval_scales = variant, w_min, w_max, list(eval_scales)
        self.label_drop, self.t_min = label_drop, t_min
        self._w: Tensor | float = 1.0               # the w the hooks read (B,) or a scalar
        self.w_enc = WEncoder(w_width, w_max=max(w_max, 1.0))
        mods = dict(student.named_modules())
        if variant == "full":
            name = embed_module or next((n for n in EMBED_MODULES if n in mods), None)
            if name is None or name not in mods:
                raise ValueError(f"guidance: no time-embedding module {name or EMBED_MODULES} in the student; "
                                 "set embed_module")
            self.w_proj = nn.Linear(w_width, out_channels(mods[name]))
            nn.init.zeros_(self.w_proj.weight)
            nn.init.zeros_(self.w_proj.bias)
            mods[name].register_forward_hook(lambda m, i, out: out + self.w_proj(self._wf(out)))
        else:
            student.requires_grad_(False)
            names = adapter_modules or default_adapter_modules(student)
            missing = [n for n in names if n not in mods]
            if missing:
                raise ValueError(f"guidance: adapter_modules not in the student: {missing}")
            self.adapters = nn.ModuleDict({n.replace(".", "_"): Adapter(out_channels(mods[n]), w_width, adapter_rank)
                                           for n in names})
            for n in names:
                adapter = self.adapters[n.replace(".", "_")]
                mods[n].register_forward_hook(lambda m, i, out, a=adapter: out + a(out, self._wf(out)))
        self.weights = {"guided": 1.0}

    def _wf(self, like: Tensor) -> Tensor:
        w = torch.as_tensor(self._w, dtype=like.dtype, device=like.device)
        return self.w_enc(w.expand(like.shape[0]) if w.dim() == 0 else w)

    @contextlib.contextmanager
    def scale(self, w: Tensor | float):
        """Run the student at guidance weight w (B,) or scalar."""
        old, self._w = self._w, w
        try:
            yield
        finally:
            self._w = old

    def extra_state(self) -> dict:
        """The w-conditioning (encoder, projection or adapters) and its settings: with student.pt, the guided student."""
        mods = {"w_enc": self.w_enc, **({"w_proj": self.w_proj} if self.variant == "full" else {"adapters": self.adapters})}
        return {"variant": self.variant, "w_range": [self.w_min, self.w_max],
                **{k: m.state_dict() for k, m in mods.items()}}

    def trainable_parameters(self):
        if self.variant == "adapter":
            return [*self.w_enc.parameters(), *self.adapters.parameters()]
        return [*self.student.parameters(), *self.w_enc.parameters(), *self.w_proj.parameters()]

    @torch.no_grad()
    def teacher_guided(self, x: Tensor, t: Tensor, y: Tensor, w: Tensor) -> Tensor:
        """u + w (c - u) of the teacher, w (B,): two evaluations."""
        with conditioning(y):
            c = self._teacher(x, t)
        with conditioning(None):
            u = self._teacher(x, t)
        w = w.reshape(-1, *([1] * (x.dim() - 1)))
        return u + w * (c - u)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        self.tick()
        x0, z = batch["x0"], batch["z"]
        y = batch.get("y")
        y = current_labels() if y is None else y
        if y is None:
            raise ValueError("guidance: the batch has no labels (\"y\") and none are set by conditioning")
        n, dev = x0.shape[0], x0.device
        y = torch.as_tensor(y, device=dev).long()
        y = torch.where(torch.rand(n, device=dev) < self.label_drop, torch.full_like(y, self.num_classes), y)
        w = self.w_min + (self.w_max - self.w_min) * torch.rand(n, device=dev)
        t = self.t_min + (1 - self.t_min) * torch.rand(n, device=dev)
        x_t = self.process.noisy(x0, z, t)
        target = self.teacher_guided(x_t, t, y, w)
        with conditioning(y), self.scale(w):
            out = self.student(x_t, t)
        if self.ctx.student_param != self.ctx.teacher_param:
            out = self.process.target(*self.process.denoise(out, x_t, t, self.ctx.student_param), self.ctx.teacher_param)
        return {"guided": ((out - target) ** 2).flatten(1).sum(1).mean()}

    # -- guided sampling and its evaluation
    @torch.no_grad()
    def sample_guided(self, z: Tensor, steps: int, y: Tensor, w: float) -> Tensor:
        """The student's guided samples: one network evaluation per step."""
        was = self.student.training
        self.student.eval()
        try:
            with conditioning(y), self.scale(w):
                return ddim_sample(self.student, self.process, z, steps, self.ctx.student_param)
        finally:
            self.student.train(was)

    @torch.no_grad()
    def teacher_sample_guided(self, z: Tensor, steps: int, y: Tensor, w: float) -> Tensor:
        """The teacher's classifier-free guided samples: two network evaluations per step."""
        wv = torch.full((z.shape[0],), float(w), device=z.device)
        net = lambda x, t: self.teacher_guided(x, t, y, wv)  # noqa: E731
        return ddim_sample(net, self.process, z, steps, self.ctx.teacher_param)

    @torch.no_grad()
    def evaluate(self, source, z: Tensor, steps: list[int], eval_cfg) -> dict[str, float]:
        if not hasattr(source, "sample_labeled"):
            return {}
        import time

        k_classes = self.num_classes
        g = torch.Generator().manual_seed(getattr(eval_cfg, "seed", 0) + 2)
        ref_x, ref_y = source.sample_labeled(4000, g)
        ref_x, ref_y = ref_x.to(z).flatten(1), ref_y.to(z.device)
        y = torch.arange(z.shape[0], device=z.device) % k_classes
        proj = getattr(eval_cfg, "projections", 256)

        def accuracy(x: Tensor) -> float:
            nearest = torch.cdist(x.flatten(1), ref_x).argmin(1)
            return float((ref_y[nearest] == y).float().mean())

        def timed(fn):
            t0 = time.perf_counter()
            out = fn()
            return out, 1000 * (time.perf_counter() - t0)

        T = self.ctx.teacher_steps
        out: dict[str, float] = {}
        for w in self.eval_scales:
            tag = f"w{w:g}"
            full, ms = timed(lambda: self.teacher_sample_guided(z, T, y, w))
            out[f"guided_teacher_acc@{T}/{tag}"] = accuracy(full)
            out[f"guided_teacher_ms@{T}/{tag}"] = ms
            for k in steps:
                xs, ms_s = timed(lambda k=k: self.sample_guided(z, k, y, w))
                xt, ms_t = timed(lambda k=k: self.teacher_sample_guided(z, k, y, w))
                out[f"guided_swd@{k}/{tag}"] = sliced_wasserstein(xs.flatten(1), full.flatten(1), proj)
                out[f"guided_acc@{k}/{tag}"] = accuracy(xs)
                out[f"guided_ms@{k}/{tag}"] = ms_s
                out[f"guided_teacher_swd@{k}/{tag}"] = sliced_wasserstein(xt.flatten(1), full.flatten(1), proj)
                out[f"guided_teacher_acc@{k}/{tag}"] = accuracy(xt)
                out[f"guided_teacher_ms@{k}/{tag}"] = ms_t
        return out
