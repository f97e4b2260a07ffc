"""Dataset condensation with gradient matching (DC; Zhao, Mopuri & Bilen, ICLR 2021).

Each outer iteration draws a fresh network; for `outer_loop` rounds, the synthetic images of each
class are moved so that the gradient of the loss on them matches the gradient on a real batch of
that class (`match_distance`, eq. 10), then the network is trained `inner_loop` steps on the
synthetic set. `augment=True` applies the same DSA transform to both sides (that is DSA).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from typing_extensions import Annotated

from distill.families.dataset.augment import DEFAULT_STRATEGY, check_strategy, dsa
from distill.families.dataset.base import DistillContext, ImageMethod, match_distance
from distill.registry import register_method


class GradientMatching(ImageMethod):
    augment = False

    def __init__(self, ctx: DistillContext, outer_loop: Annotated[int, Field(ge=1)] | None = None,
                 inner_loop: Annotated[int, Field(ge=0)] | None = None, batch_real: Annotated[int, Field(ge=1)] = 256,
                 lr_img: Annotated[float, Field(gt=0)] = 0.1, lr_net: Annotated[float, Field(gt=0)] = 0.01,
                 init: str = "real", strategy: str = DEFAULT_STRATEGY):
        super().__init__(ctx, lr_img=lr_img, init=init)
        # the papers' loop sizes by IPC: 1 -> (1, 1), 10 -> (10, 50), 50 -> (50, 10)
        default = (1, 1) if ctx.ipc < 10 else (10, 50) if ctx.ipc < 50 else (50, 10)
        self.outer_loop = outer_loop or default[0]
        self.inner_loop = default[1] if inner_loop is None else inner_loop
        self.batch_real, self.lr_net, self.strategy = batch_real, lr_net, check_strategy(strategy)

    def class_loss(self, net: torch.nn.Module, c: int) -> torch.Tensor:
        """Matching distance of class c on one real batch and the class's synthetic images."""
        ctx = self.ctx
        xr, xs = ctx.real(c, self.batch_real), self.class_images(c)
        if self.augment:
            seed = ctx.rand_int(2**31 - 1)
            xr, xs = dsa(xr, seed, self.strategy), dsa(xs, seed, self.strategy)
        params = [p for p in net.parameters()]
        yr = torch.full((len(xr),), c, device=xr.device)
        ys = torch.full((len(xs),), c, device=xs.device)
        gr = [g.detach() for g in torch.autograd.grad(F.cross_entropy(net(xr), yr), params)]
        gs = torch.autograd.grad(F.cross_entropy(net(xs), ys), params, create_graph=True)
        return match_distance(list(gs), gr)

    def step(self, it: int, iterations: int) -> dict[str, float]:
        ctx = self.ctx
        net = ctx.make_net(ctx.seed * 100_003 + it).to(ctx.device)
        net_opt = torch.optim.SGD(net.parameters(), lr=self.lr_net, momentum=0.5)
        total = 0.0
        for ol in range(self.outer_loop):
            loss = sum(self.class_loss(net, c) for c in range(ctx.num_classes))
            self.opt_img.zero_grad()
            loss.backward()
            self.opt_img.step()
            total += float(loss.detach())
            if ol == self.outer_loop - 1:
                break
            x_syn, y_syn = self.images.detach(), self.labels
            for _ in range(self.inner_loop):  # train the network on the (augmented) synthetic set
                idx = torch.randperm(len(x_syn), generator=ctx.gen)[:256].to(x_syn.device)
                xb = x_syn[idx]
                if self.augment:  # per-sample draws, as the authors' inner loop (no seed)
                    xb = dsa(xb, ctx.rand_int(2**31 - 1), self.strategy, siamese=False)
                net_opt.zero_grad()
                F.cross_entropy(net(xb), y_syn[idx]).backward()
                net_opt.step()
        return {"match": total / self.outer_loop}


@register_method("dc", family="dataset", description="gradient matching (DC, ICLR 2021)", injected=("ctx",))
class DC(GradientMatching):
    augment = False
