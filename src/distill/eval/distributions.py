"""Distances between sample sets and the straightness of sampler trajectories.

    sliced_wasserstein(x, y)   # (N, D), (M, D) -> float; W1 averaged over random 1-D projections
    mmd(x, y)                  # (N, D), (M, D) -> float; squared MMD, sum of Gaussian kernels
    straightness(traj, times)  # (K+1, N, D), (K+1,) -> float; 0 for a straight constant-speed path

Used by the diffusion family on 2-D toys; they work for any flat D (images: flatten first).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def _quantiles(v: Tensor, n: int) -> Tensor:
    """Values of the empirical quantile function of each column of v (N, P) at n mid-points: (n, P)."""
    v = v.sort(dim=0).values
    if v.shape[0] == n:
        return v
    q = (torch.arange(n, dtype=v.dtype, device=v.device) + 0.5) / n
    pos = q * v.shape[0] - 0.5
    lo = pos.floor().clamp(0, v.shape[0] - 1).long()
    hi = (lo + 1).clamp(max=v.shape[0] - 1)
    w = (pos - lo.to(v.dtype)).clamp(0, 1)[:, None]
    return v[lo] * (1 - w) + v[hi] * w


def sliced_wasserstein(x: Tensor, y: Tensor, n_projections: int = 256, p: int = 1, seed: int = 0) -> float:
    """Sliced p-Wasserstein distance (Rabin et al. 2011): (E_theta W_p^p(theta.x, theta.y))^(1/p) over
    `n_projections` directions drawn uniformly on the sphere with a fixed seed. x (N, D), y (M, D)."""
    x, y = x.reshape(len(x), -1).double(), y.reshape(len(y), -1).double()
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"sliced_wasserstein: dimensions differ ({x.shape[1]} vs {y.shape[1]})")
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(x.shape[1], n_projections, generator=g, dtype=torch.float64)
    theta = (theta / theta.norm(dim=0, keepdim=True)).to(x.device)
    n = max(len(x), len(y))
    qx, qy = _quantiles(x @ theta, n), _quantiles(y @ theta, n)  # (n, P)
    return float(((qx - qy).abs() ** p).mean() ** (1.0 / p))


def mmd(x: Tensor, y: Tensor, bandwidths: Sequence[float] = (0.1, 0.2, 0.5, 1.0, 2.0)) -> float:
    """Squared maximum mean discrepancy (Gretton et al. 2012), biased V-statistic, with the kernel
    sum_h exp(-|a-b|^2 / (2 h^2)). x (N, D), y (M, D). 0 iff the two sample sets are equal."""
    x, y = x.reshape(len(x), -1).double(), y.reshape(len(y), -1).double()

    def k(a: Tensor, b: Tensor) -> Tensor:
        d2 = torch.cdist(a, b).pow(2)
        return sum(torch.exp(-d2 / (2 * h * h)) for h in bandwidths).mean()

    return float(k(x, x) + k(y, y) - 2 * k(x, y))


def straightness(traj: Tensor, times: Tensor) -> float:
    """Mean squared deviation of a sampler's per-step velocity from the straight line between its
    ends (Liu et al. 2022, "Flow Straight and Fast", eq. 6), divided by the squared length of that
    line: sum_k dt_k E|dx_k/dt_k - (x_K - x_0)/(t_K - t_0)|^2 / ((t_K - t_0) E|x_K - x_0|^2).
    traj (K+1, N, D), times (K+1,). 0 for every straight path walked at constant speed."""
    traj = traj.reshape(traj.shape[0], traj.shape[1], -1).double()
    times = times.double().to(traj.device)
    if len(times) < 3:
        return 0.0
    span = times[-1] - times[0]
    chord = (traj[-1] - traj[0]) / span                    # (N, D)
    dt = (times[1:] - times[:-1])                          # (K,)
    vel = (traj[1:] - traj[:-1]) / dt[:, None, None]       # (K, N, D)
    dev = ((vel - chord) ** 2).sum(-1).mean(-1)            # (K,)
    return float((dev * dt.abs()).sum() / span.abs() / ((chord ** 2).sum(-1).mean()).clamp(min=1e-12))
