"""Analytic denoisers for tests: the exact E[x0 | x_t] of a Gaussian mixture under a process."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from distill.families.diffusion.process import Process


class MixtureDenoiser(nn.Module):
    """Exact x0-prediction for data sum_k pi_k N(mu_k, s^2 I): (B, D), (B,) -> (B, D)."""

    def __init__(self, process: Process, means: Tensor, std: float):
        super().__init__()
        self.process, self.std = process, std
        self.register_buffer("means", means.float())  # (K, D)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        a, s = self.process.alpha_sigma(t[:, None])                 # (B, 1)
        var = a * a * self.std**2 + s * s                           # (B, 1)
        diff = x[:, None, :] - a[:, None] * self.means[None]        # (B, K, D)
        logw = -(diff**2).sum(-1) / (2 * var)                       # (B, K)
        w = torch.softmax(logw, -1)
        post = self.means[None] + (a * self.std**2 / var)[:, None] * diff  # (B, K, D)
        return (w[..., None] * post).sum(1)


class MixtureSource:
    dim = 2

    def __init__(self, means: Tensor, std: float):
        self.means, self.std = means, std

    def sample(self, n: int, generator=None) -> Tensor:
        k = torch.randint(0, len(self.means), (n,), generator=generator)
        return self.means[k] + self.std * torch.randn(n, self.means.shape[1], generator=generator)


TWO = torch.tensor([[-1.5, 0.0], [1.5, 0.0]])


class ConditionalMixtureDenoiser(MixtureDenoiser):
    """Exact x0-prediction of a class-conditional mixture: class k is component k; the null class
    (index K) and no labels give the whole mixture. Labels come from `unet.conditioning`."""

    def __init__(self, process: Process, means: Tensor, std: float):
        super().__init__(process, means, std)
        self.num_classes = len(means)
        self.guidance_scale = 1.0

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        from distill.families.diffusion.unet import current_labels

        y = current_labels()
        a, s = self.process.alpha_sigma(t[:, None])
        var = a * a * self.std**2 + s * s
        diff = x[:, None, :] - a[:, None] * self.means[None]
        logw = -(diff**2).sum(-1) / (2 * var)                       # (B, K)
        if y is not None:
            y = y.to(x.device).long()
            keep = (torch.arange(self.num_classes, device=x.device)[None] == y[:, None]) | (y[:, None] == self.num_classes)
            logw = logw.masked_fill(~keep, -1e30)
        w = torch.softmax(logw, -1)
        post = self.means[None] + (a * self.std**2 / var)[:, None] * diff
        return (w[..., None] * post).sum(1)


class LabeledMixtureSource(MixtureSource):
    num_classes = 2

    def __init__(self, means: Tensor, std: float):
        super().__init__(means, std)
        self.num_classes = len(means)

    def sample_labeled(self, n: int, generator=None):
        k = torch.randint(0, len(self.means), (n,), generator=generator)
        return self.means[k] + self.std * torch.randn(n, self.means.shape[1], generator=generator), k

    def sample(self, n: int, generator=None) -> Tensor:
        return self.sample_labeled(n, generator)[0]


# three overlapping classes: guidance (w > 1) pushes samples away from the other classes
THREE = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [0.0, 1.2]])
