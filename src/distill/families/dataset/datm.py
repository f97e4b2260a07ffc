"""Difficulty-aligned trajectory matching (DATM; Guo et al., ICLR 2024).

MTT with (1) a matching range set by IPC -- small sets match early (easy) expert epochs, large sets
later (hard) ones -- whose upper bound grows from `max_start_epoch` to `max_start_epoch_final` over
the iterations, and (2) learnable soft labels initialised from an expert's logits on the initial
real images (only images the expert classifies correctly are used for the initialisation).
"""
from __future__ import annotations

import torch
from pydantic import Field
from typing_extensions import Annotated

from distill.families.dataset.base import DistillContext, inherit_params
from distill.families.dataset.experts import unflatten
from distill.families.dataset.mtt import TrajectoryMatching
from distill.registry import register_method


@register_method("datm", family="dataset", description="difficulty-aligned trajectories + soft labels (DATM, ICLR 2024)",
                 injected=("ctx",))
@inherit_params
class DATM(TrajectoryMatching):
    soft_labels = True
    learned = (*TrajectoryMatching.learned, ("soft", "opt_label"))

    def __init__(self, ctx: DistillContext, min_start_epoch: int | None = None,
                 max_start_epoch_final: int | None = None, lr_label: Annotated[float, Field(ge=0)] = 2.0, **kw):
        super().__init__(ctx, **kw)
        E, M = self.expert_epochs, self.match_epochs
        # IPC-aligned window: low IPC -> early epochs; high IPC -> later epochs
        frac = 0.0 if ctx.ipc < 10 else 0.25 if ctx.ipc < 50 else 0.5
        self.min_start_epoch = int(frac * (E - M)) if min_start_epoch is None else min_start_epoch
        self.max_start_epoch = max(self.max_start_epoch, self.min_start_epoch + 1)
        self.max_final = min(E - M, max_start_epoch_final or E - M)
        self.lr_label = lr_label

    def setup(self) -> None:
        super().setup()
        assert self.experts is not None
        # an expert at its last epoch is the teacher of the labels (and of the KD reference)
        final = self.experts[0][-1].to(self.ctx.device)
        self.teacher = self.ctx.make_net(self.ctx.seed).to(self.ctx.device)
        with torch.no_grad():
            for p, v in zip(self.teacher.parameters(), unflatten(self.teacher, final).values()):
                p.copy_(v)
            self.teacher.eval()
            # re-draw initial images the expert gets right, where a class has enough of them
            for c in range(self.ctx.num_classes):
                idx = self.ctx.by_class[c]
                pred = self.teacher(self.ctx.x[idx]).argmax(-1)
                good = idx[(pred == c).cpu()]
                if len(good) >= self.ctx.ipc:
                    pick = good[torch.randperm(len(good), generator=self.ctx.gen)[:self.ctx.ipc]]
                    self.class_images(c).copy_(self.ctx.x[pick])
            logits = self.teacher(self.images.detach())
        self.soft = logits.detach().clone().requires_grad_(True)
        self.opt_label = torch.optim.SGD([self.soft], lr=max(self.lr_label, 1e-12), momentum=0.9)

    def targets(self):
        return self.soft

    def start_range(self, it: int, iterations: int) -> tuple[int, int]:
        grow = self.max_start_epoch + (self.max_final - self.max_start_epoch) * it / max(1, iterations - 1)
        return self.min_start_epoch, max(self.min_start_epoch + 1, int(grow))

    def step(self, it: int, iterations: int) -> dict[str, float]:
        self.opt_label.zero_grad()
        out = super().step(it, iterations)
        if self.lr_label > 0:
            self.opt_label.step()
        return out
