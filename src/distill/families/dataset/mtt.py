"""Matching training trajectories (MTT; Cazenavette et al., CVPR 2022).

Experts are trained on real data first (`experts.py`; `expert_batch` sets how many SGD steps an
epoch is: on a small data set a smaller batch keeps the experts from being undertrained). Each
iteration picks an expert and a start epoch t < max_start_epoch, starts a student at theta*_t, takes
`syn_steps` SGD steps on synthetic minibatches with a learnable lr, and minimises (eq. 2)
    || theta_hat_{t+N} - theta*_{t+M} ||^2 / || theta*_t - theta*_{t+M} ||^2 .

Memory. Backpropagating through the unrolled steps needs, for every step, the parameter vector it
started from (P floats) -- the method cannot do with less without approximations. Everything else
of a step (activations, the second-order graph of its gradient) is recomputed during the backward
pass (activation checkpointing per step, `checkpoint=True`), so the peak is about
    syn_steps x 2P floats + the graph of ONE step on one synthetic minibatch
instead of syn_steps x (2P + activations). `tests/dataset/test_ds_mtt.py` measures this.
"""
from __future__ import annotations

import torch
from pydantic import Field
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint as ckpt
from typing_extensions import Annotated

from distill.families.dataset.augment import DEFAULT_STRATEGY, check_strategy, dsa
from distill.families.dataset.base import DistillContext, ImageMethod, SyntheticSet, soft_or_hard_loss
from distill.families.dataset.experts import train_experts, unflatten
from distill.registry import register_method


class TrajectoryMatching(ImageMethod):
    sam_rho = 0.0
    learned = (*ImageMethod.learned, ("syn_lr", "opt_lr"))

    def __init__(self, ctx: DistillContext, num_experts: Annotated[int, Field(ge=1)] = 3,
                 expert_epochs: Annotated[int, Field(ge=1)] = 10, expert_lr: Annotated[float, Field(gt=0)] = 0.01,
                 expert_batch: Annotated[int, Field(ge=1)] = 256,
                 syn_steps: Annotated[int, Field(ge=1)] = 10, match_epochs: Annotated[int, Field(ge=1)] = 2,
                 max_start_epoch: Annotated[int, Field(ge=1)] = 5, batch_syn: int | None = None,
                 lr_img: Annotated[float, Field(gt=0)] = 100.0, lr_lr: Annotated[float, Field(gt=0)] = 1e-5,
                 lr_init: Annotated[float, Field(gt=0)] = 0.01, init: str = "real", augment: bool = True,
                 strategy: str = DEFAULT_STRATEGY, checkpoint: bool = True):
        super().__init__(ctx, lr_img=lr_img, init=init)
        if max_start_epoch + match_epochs > expert_epochs:
            raise ValueError(f"max_start_epoch ({max_start_epoch}) + match_epochs ({match_epochs}) must be <= "
                             f"expert_epochs ({expert_epochs})")
        self.num_experts, self.expert_epochs, self.expert_lr = num_experts, expert_epochs, expert_lr
        self.expert_batch = expert_batch
        self.syn_steps, self.match_epochs, self.max_start_epoch = syn_steps, match_epochs, max_start_epoch
        self.min_start_epoch = 0
        self.batch_syn, self.lr_lr, self.lr_init = batch_syn, lr_lr, lr_init
        self.augment, self.strategy, self.checkpoint = augment, check_strategy(strategy), checkpoint
        self.experts: list[torch.Tensor] | None = None

    def setup(self) -> None:
        super().setup()
        if self.experts is None:
            self.experts = train_experts(self.ctx, self.num_experts, self.expert_epochs, self.expert_lr,
                                         batch_size=self.expert_batch, augment=self.augment, strategy=self.strategy,
                                         sam_rho=self.sam_rho)
        self.net = self.ctx.make_net(self.ctx.seed).to(self.ctx.device)
        self.syn_lr = torch.tensor(self.lr_init, device=self.ctx.device).requires_grad_(True)
        self.opt_lr = torch.optim.SGD([self.syn_lr], lr=self.lr_lr, momentum=0.5)

    def targets(self):
        return self.labels

    def _inner_step(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        """One SGD step of the student: theta - lr * grad L(theta; x, y), differentiable in x, y, lr, theta."""
        with torch.enable_grad():
            loss = soft_or_hard_loss(functional_call(self.net, unflatten(self.net, theta), (x,)), y)
            (g,) = torch.autograd.grad(loss, theta, create_graph=True)
        return theta - lr * g

    def unroll(self, theta0: torch.Tensor, it: int) -> torch.Tensor:
        theta = theta0.clone().requires_grad_(True)
        y_all = self.targets()
        n = len(self.images)
        bs = self.batch_syn or n
        for _ in range(self.syn_steps):
            idx = torch.randperm(n, generator=self.ctx.gen)[:bs].to(self.images.device)
            x = self.images[idx]
            if self.augment:
                x = dsa(x, self.ctx.rand_int(2**31 - 1), self.strategy, siamese=False)  # per sample, as MTT
            if self.checkpoint:
                theta = ckpt(self._inner_step, theta, x, y_all[idx], self.syn_lr, use_reentrant=False)
            else:
                theta = self._inner_step(theta, x, y_all[idx], self.syn_lr)
        return theta

    def start_range(self, it: int, iterations: int) -> tuple[int, int]:
        return self.min_start_epoch, self.max_start_epoch

    def step(self, it: int, iterations: int) -> dict[str, float]:
        assert self.experts is not None
        traj = self.experts[self.ctx.rand_int(len(self.experts))]
        lo, hi = self.start_range(it, iterations)
        start = lo + self.ctx.rand_int(max(1, hi - lo))
        dev = self.ctx.device
        theta0, target = traj[start].to(dev), traj[start + self.match_epochs].to(dev)
        theta = self.unroll(theta0, it)
        loss = ((theta - target) ** 2).sum() / ((theta0 - target) ** 2).sum()
        self.opt_img.zero_grad()
        self.opt_lr.zero_grad()
        loss.backward()
        self.opt_img.step()
        self.opt_lr.step()
        with torch.no_grad():
            self.syn_lr.clamp_(min=1e-5)
        return {"trajectory": float(loss.detach()), "syn_lr": float(self.syn_lr.detach())}

    def result(self) -> SyntheticSet:
        return SyntheticSet(self.images.detach().clone(), self.targets().detach().clone(), float(self.syn_lr))


@register_method("mtt", family="dataset", description="matching training trajectories (MTT, CVPR 2022)",
                 injected=("ctx",))
class MTT(TrajectoryMatching):
    pass
