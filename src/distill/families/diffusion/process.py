"""The noising process and the deterministic (DDIM / Euler) sampler every method shares.

A process writes a noisy point as x_t = alpha(t) x0 + sigma(t) eps, t in [0, 1], data at t=0:
- "flow": alpha = 1 - t, sigma = t (rectified flow / flow matching, Liu et al. 2022, Lipman et al. 2023)
- "vp":   alpha^2 = exp(-(b0 t + (b1 - b0) t^2 / 2)), alpha^2 + sigma^2 = 1 (DDPM's linear beta
          schedule in continuous time, Song et al. 2021), with alpha(0) = 1 and sigma(0) = 0.

A network's raw output is read under a parameterisation: "eps" (DDPM noise prediction), "x0"
(the clean point) or "velocity" (flow only: v = dx_t/dt = eps - x0). `denoise` turns any of them
into the pair (x0_hat, eps_hat); a DDIM step from t to s is then x_s = alpha(s) x0_hat + sigma(s)
eps_hat (Song et al. 2021, eq. 12 with eta = 0); for the flow process it is exactly an Euler step
of the velocity ODE. So one sampler serves both processes and every parameterisation.
Tensors are (B, ...) and times (B,) or scalars; everything broadcasts over trailing dims.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

Kind = Literal["flow", "vp"]
Param = Literal["eps", "x0", "velocity"]


def _bcast(t: Tensor | float, like: Tensor) -> Tensor:
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    if t.dim() == 0:
        t = t.expand(like.shape[0])
    return t.reshape(-1, *([1] * (like.dim() - 1)))


class Process:
    """alpha(t), sigma(t), parameterisation conversions and the DDIM sampler."""

    def __init__(self, kind: Kind = "flow", beta_min: float = 0.1, beta_max: float = 20.0):
        if kind not in ("flow", "vp"):
            raise ValueError(f"process: unknown kind {kind!r}; allowed: flow, vp")
        self.kind, self.beta_min, self.beta_max = kind, beta_min, beta_max

    def __repr__(self) -> str:
        return f"Process({self.kind!r})"

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        if self.kind == "flow":
            return 1 - t, t
        log_a2 = -(self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t)
        a2 = torch.exp(log_a2)
        return a2.sqrt(), (-torch.expm1(log_a2)).clamp(min=0).sqrt()

    def noisy(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        a, s = self.alpha_sigma(_bcast(t, x0))
        return a * x0 + s * eps

    def check_param(self, param: str) -> None:
        if param == "velocity" and self.kind != "flow":
            raise ValueError("parameterisation 'velocity' needs the flow process; use eps or x0 with vp")

    def denoise(self, out: Tensor, x: Tensor, t: Tensor | float, param: Param) -> tuple[Tensor, Tensor]:
        """(x0_hat, eps_hat) from a network output `out` at the noisy point x (B, ...), time t."""
        tb = _bcast(t, x)
        a, s = self.alpha_sigma(tb)
        if param == "velocity":      # x = (1-t) x0 + t eps, v = eps - x0
            return x - tb * out, x + (1 - tb) * out
        if param == "eps":
            return (x - s * out) / a.clamp(min=1e-4), out
        return out, (x - a * out) / s.clamp(min=1e-4)

    def target(self, x0: Tensor, eps: Tensor, param: Param) -> Tensor:
        """What a network under `param` should output for this (x0, eps) pair."""
        return {"eps": eps, "x0": x0, "velocity": eps - x0}[param]

    def ddim_step(self, x0_hat: Tensor, eps_hat: Tensor, s: Tensor | float) -> Tensor:
        a, sg = self.alpha_sigma(_bcast(s, x0_hat))
        return a * x0_hat + sg * eps_hat

    @staticmethod
    def grid(steps: int, t_max: float = 1.0, device=None) -> Tensor:
        """Uniform times t_max = t_0 > ... > t_steps = 0: (steps + 1,)."""
        return torch.linspace(t_max, 0.0, steps + 1, device=device)


def call(net: nn.Module | object, x: Tensor, t: Tensor | float) -> Tensor:
    """net(x, t) with t broadcast to (B,)."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.dim() == 0:
        t = t.expand(x.shape[0])
    return net(x, t)


def ddim_sample(net, process: Process, z: Tensor, steps: int, param: Param, *, t_max: float = 1.0,
                return_traj: bool = False) -> Tensor | tuple[Tensor, Tensor, Tensor]:
    """Deterministic sampling from noise z (B, ...) in `steps` uniform DDIM steps.
    With return_traj: (x0, traj (steps+1, B, ...), times (steps+1,))."""
    times = Process.grid(steps, t_max, z.device)
    x, traj = z, [z]
    for i in range(steps):
        x0, eps = process.denoise(call(net, x, times[i]), x, times[i], param)
        x = process.ddim_step(x0, eps, times[i + 1])
        traj.append(x)
    return (x, torch.stack(traj), times) if return_traj else x


def renoise_sample(net, process: Process, z: Tensor, steps: int, param: Param, *, t_max: float = 1.0,
                   generator: torch.Generator | None = None) -> Tensor:
    """Multistep consistency sampling (Song et al. 2023, alg. 1): denoise to x0_hat, add fresh noise
    at the next time, repeat; the last step returns x0_hat. For one step it equals `ddim_sample`."""
    times = Process.grid(steps, t_max, z.device)
    x = z
    for i in range(steps):
        x0, _ = process.denoise(call(net, x, times[i]), x, times[i], param)
        if i + 1 == steps:
            return x0
        noise = torch.randn(x.shape, generator=generator, device="cpu").to(x) if generator else torch.randn_like(x)
        x = process.noisy(x0, noise, times[i + 1])
    return x


def snr_weight(process: Process, t: Tensor) -> Tensor:
    """Truncated SNR weight max(alpha^2 / sigma^2, 1) of x0-space losses (Salimans & Ho 2022)."""
    a, s = process.alpha_sigma(t)
    return torch.clamp(a * a / (s * s).clamp(min=1e-8), min=1.0, max=1e4)

