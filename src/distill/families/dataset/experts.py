"""Expert trajectories for trajectory matching: networks trained on the real data whose flattened
parameters are stored after every epoch (epoch 0 = initialisation).

`sam_rho > 0` trains with sharpness-aware minimisation (Foret et al., ICLR 2021), which gives the
flatter trajectories of FTD. Trajectories are kept in memory on the CPU: experts x (epochs + 1) x P floats.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.families.dataset.augment import dsa
from distill.families.dataset.base import DistillContext


def flat_params(net: nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()]).cpu().clone()


def unflatten(net: nn.Module, flat: Tensor) -> dict[str, Tensor]:
    """Views of `flat` (P,) shaped as the named parameters of `net` (for torch.func.functional_call)."""
    out, i = {}, 0
    for name, p in net.named_parameters():
        out[name] = flat[i:i + p.numel()].view_as(p)
        i += p.numel()
    return out


def train_experts(ctx: DistillContext, num: int, epochs: int, lr: float = 0.01, batch_size: int = 256,
                  augment: bool = True, strategy: str = "color_crop_cutout_flip_scale_rotate",
                  sam_rho: float = 0.0) -> list[Tensor]:
    """`num` trajectories, each a (epochs + 1, P) tensor of parameters (plain SGD, no momentum, as MTT)."""
    out = []
    for e in range(num):
        net = ctx.make_net(ctx.seed * 7919 + 10_000 + e).to(ctx.device)
        opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.0, weight_decay=0.0)
        snaps = [flat_params(net)]
        for _ in range(epochs):
            order = torch.randperm(len(ctx.x), generator=ctx.gen).to(ctx.x.device)
            for i in range(0, len(order), batch_size):
                idx = order[i:i + batch_size]
                xb = dsa(ctx.x[idx], ctx.rand_int(2**31 - 1), strategy, siamese=False) if augment else ctx.x[idx]
                loss = F.cross_entropy(net(xb), ctx.y[idx])
                opt.zero_grad()
                loss.backward()
                if sam_rho > 0:  # ascend to the worst nearby point, take its gradient there, come back
                    params = [p for p in net.parameters() if p.grad is not None]
                    norm = torch.sqrt(sum((p.grad ** 2).sum() for p in params)) + 1e-12
                    eps = [sam_rho * p.grad / norm for p in params]
                    with torch.no_grad():
                        for p, d in zip(params, eps):
                            p.add_(d)
                    opt.zero_grad()
                    F.cross_entropy(net(xb), ctx.y[idx]).backward()
                    with torch.no_grad():
                        for p, d in zip(params, eps):
                            p.sub_(d)
                opt.step()
            snaps.append(flat_params(net))
        out.append(torch.stack(snaps))
    return out
