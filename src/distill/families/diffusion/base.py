"""The shape every diffusion distillation method shares.

A method is an nn.Module that owns the student denoiser (a submodule: optimised and saved) and
holds the frozen teacher by reference. A batch is {"x0": (B, ...) data, "z": (B, ...) noise};
data-free methods ignore x0. `forward(batch)` returns named loss terms; `sample(z, steps)` draws
from the distilled student. Everything a method needs beyond that it owns (a target network, a
fake-score network and its optimiser, teacher couplings).

    method = Progressive(student, teacher, ctx, start_steps=64)
    terms = method(batch)            # {"distill": ...}; the engine weights and sums them
    method.finalize()                # after the last step
    x = method.sample(z, steps=1)    # (B, ...)
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from distill.errors import ConfigError
from distill.families.diffusion.process import Process, call, ddim_sample, renoise_sample
from distill.families.diffusion.unet import conditioning, current_labels
from distill.teacher import Teacher


@dataclass
class DiffusionContext:
    """What the runner tells a method: the process, both parameterisations, step counts, budget."""

    process: Process
    teacher_param: str
    student_param: str
    teacher_steps: int       # the teacher's full sampler step count
    student_steps: int       # the step count the student is distilled for
    total_steps: int         # forward calls the method will see in training
    seed: int = 0


class DiffusionMethod(nn.Module):
    """Base class. Subclasses implement `forward`; `sampler` says how `sample` uses the student:
    "ode" = deterministic DDIM/Euler steps, "renoise" = multistep consistency sampling."""

    sampler: Literal["ode", "renoise"] = "ode"

    def __init__(self, student: nn.Module, teacher: Teacher, ctx: DiffusionContext, init_from_teacher: bool = True):
        super().__init__()
        self.student = student
        self._teacher = teacher  # plain attribute: never a submodule, never optimised
        self.ctx = ctx
        self.process = ctx.process
        self.weights: dict[str, float] = {}
        self.calls = 0           # training forward calls so far (schedules inside methods)
        self.step_index = 0      # the optimiser step of the latest training call (see `tick`)
        if init_from_teacher and ctx.teacher_param != ctx.student_param and weights_fit(teacher.module, student):
            raise ConfigError(
                f"student.param: the student is read as {ctx.student_param!r} but the teacher predicts "
                f"{ctx.teacher_param!r}; copying the teacher's weights would give a student whose output means "
                f"{ctx.teacher_param!r}, not {ctx.student_param!r}. Set student.param: {ctx.teacher_param} (or leave "
                "it unset) to start from the teacher, or give the method init_from_teacher: false to start from "
                "random weights.")
        self.initialised_from_teacher = init_from_teacher and copy_weights(teacher.module, student)
        # class-conditional teacher (UNet / MLP with num_classes): the count of real classes, else None
        self.num_classes: int | None = getattr(teacher.module, "num_classes", None)

    def __call__(self, batch: dict[str, Tensor], *args, **kwargs):
        """Run `forward(batch)` under the batch's class labels "y" (B,) when the teacher is class-conditional:
        the teacher, student and fake networks called inside then see them (through `unet.conditioning`,
        scoped to this call). The runner's loader puts a labelled data set's labels in every batch, so the
        recipe path trains class-conditionally, as a caller that sets `conditioning(y)` around the call
        does. A batch without "y" runs under the caller's labels (None: the null class); an unconditional
        teacher ignores "y"."""
        y = batch.get("y") if isinstance(batch, dict) else None
        if y is None or self.num_classes is None:
            return super().__call__(batch, *args, **kwargs)
        with conditioning(y):
            return super().__call__(batch, *args, **kwargs)

    def draw_labels(self, n: int, generator: torch.Generator | None = None, device=None) -> Tensor | None:
        """Labels for a batch the method draws itself (teacher couplings, fake-score data): n classes
        uniform over the teacher's, when the caller runs the method class-conditionally (labels set
        by `unet.conditioning`) and the teacher has classes; else None (the null class)."""
        if self.num_classes is None or current_labels() is None:
            return None
        return torch.randint(0, self.num_classes, (n,), generator=generator).to(device)

    # -- the teacher, read in its own parameterisation
    def teacher_denoise(self, x: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
        return self.process.denoise(self._teacher(x, _t(t, x)), x, t, self.ctx.teacher_param)

    @torch.no_grad()
    def teacher_step(self, x: Tensor, t: Tensor | float, s: Tensor | float) -> Tensor:
        """One deterministic teacher step from time t to time s < t."""
        return self.process.ddim_step(*self.teacher_denoise(x, t), s)

    @torch.no_grad()
    def teacher_sample(self, z: Tensor, steps: int | None = None) -> Tensor:
        return ddim_sample(self._teacher, self.process, z, steps or self.ctx.teacher_steps, self.ctx.teacher_param)

    # -- the student
    def student_denoise(self, x: Tensor, t: Tensor | float, net: nn.Module | None = None) -> tuple[Tensor, Tensor]:
        return self.process.denoise(call(net or self.student, x, t), x, t, self.ctx.student_param)

    def trainable_parameters(self):
        return self.student.parameters()

    def finalize(self) -> None:
        """Called once after training (e.g. to store the last round's model)."""

    def tick(self, batch: dict | None = None) -> int:
        """Count a training call; returns the index of this call. Sets `step_index`, the optimiser step
        this call belongs to: the batch's "step" (optimiser steps done before it; the runner sets it, so
        every micro-batch of one accumulation window has the same), else the call's index (a plain loop
        with one call per optimiser step). Per-step work (EMA targets, fake-score updates) keys on it."""
        n = self.calls
        if self.training:
            self.calls += 1
            step = None if batch is None else batch.get("step")
            self.step_index = n if step is None else int(step)
        return n

    def extra_state(self) -> dict:
        """What sampling needs beyond the student's weights (e.g. a w-embedding); saved beside student.pt."""
        return {}

    def evaluate(self, source, z: Tensor, steps: list[int], eval_cfg) -> dict[str, float]:
        """Metrics of this method beyond the runner's (e.g. guided samples); merged into its summary."""
        return {}

    def sampling_net(self, steps: int) -> nn.Module:
        return self.student

    @torch.no_grad()
    def sample(self, z: Tensor, steps: int, *, return_traj: bool = False, generator: torch.Generator | None = None,
               y: Tensor | None = None):
        """The student's samples from noise z (B, ...); y (B,): class labels (None: the caller's, or the null class)."""
        if y is not None:
            with conditioning(y):
                return self.sample(z, steps, return_traj=return_traj, generator=generator)
        net = self.sampling_net(steps)
        was = net.training
        net.eval()
        try:
            if self.sampler == "ode" or return_traj:
                return ddim_sample(net, self.process, z, steps, self.ctx.student_param, return_traj=return_traj)
            return renoise_sample(net, self.process, z, steps, self.ctx.student_param, generator=generator)
        finally:
            net.train(was)


def _t(t: Tensor | float, x: Tensor) -> Tensor:
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    return t.expand(x.shape[0]) if t.dim() == 0 else t


def _base_keys(src: nn.Module, dst: nn.Module) -> dict[str, str] | None:
    """src's state_dict key -> dst's key (LoRA base layers mapped), when every name and shape matches."""
    a, b = src.state_dict(), dst.state_dict()
    base = {k.replace(".base_layer.", "."): k for k in b if ".lora_" not in k}
    if a.keys() != base.keys() or any(a[k].shape != b[base[k]].shape for k in a):
        return None
    return base


def weights_fit(src: nn.Module, dst: nn.Module) -> bool:
    """Whether `copy_weights(src, dst)` would copy (every name and shape matches)."""
    return _base_keys(src, dst) is not None


def copy_weights(src: nn.Module, dst: nn.Module) -> bool:
    """Load src's weights into dst when every name and shape matches; False (dst untouched) otherwise.
    A dst with LoRA adapters (peft: `x.base_layer.weight`, `x.lora_A...`) gets its base weights; its
    adapters are left as they are. The caller checks that both read their outputs alike (parameterisation)."""
    base = _base_keys(src, dst)
    if base is None:
        return False
    a, b = src.state_dict(), dst.state_dict()
    if len(base) == len(b) and all(k == v for k, v in base.items()):
        dst.load_state_dict(copy.deepcopy(a))
    else:
        dst.load_state_dict({base[k]: v.clone() for k, v in a.items()}, strict=False)
    return True


def frozen_copy(module: nn.Module) -> nn.Module:
    m = copy.deepcopy(module)
    m.requires_grad_(False)
    m.eval()
    return m


def uniform_index(n: int, size: int, device) -> Tensor:
    return torch.randint(0, n, (size,), device=device)


@contextlib.contextmanager
def held(net: nn.Module):
    """Gradients flow through `net` to its inputs, none to its weights."""
    flags = [p.requires_grad for p in net.parameters()]
    net.requires_grad_(False)
    try:
        yield net
    finally:
        for p, f in zip(net.parameters(), flags):
            p.requires_grad_(f)
