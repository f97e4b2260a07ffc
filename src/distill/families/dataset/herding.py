"""Baseline: herding selection (Welling, ICML 2009; as the coreset baseline of the DC paper).

Per class, greedily add the real image whose embedding brings the running mean of the selected
embeddings closest to the class mean. Embeddings are the penultimate features of a network of the
distillation architecture trained on the real data first (SGD, batch 256, `train_epochs` epochs), as
the DC paper's herding baseline uses a trained ConvNet. The default 10 epochs trains the digits
ConvNet to 96% training accuracy (about 60 steps) and is many more steps on larger sets;
`train_epochs: 0` selects on random features (the earlier default).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from typing_extensions import Annotated

from distill.families.dataset.base import DatasetMethod, DistillContext, SyntheticSet, embed
from distill.registry import register_method


def herd(features: torch.Tensor, k: int) -> list[int]:
    """Indices of k rows of features (N, D) chosen by herding (no repeats)."""
    mu = features.mean(0)
    chosen: list[int] = []
    total = torch.zeros_like(mu)
    avail = torch.ones(len(features), dtype=torch.bool, device=features.device)
    for t in range(1, min(k, len(features)) + 1):
        dist = ((mu - (total + features) / t) ** 2).sum(-1)
        dist[~avail] = float("inf")
        i = int(dist.argmin())
        chosen.append(i)
        avail[i] = False
        total = total + features[i]
    return chosen


@register_method("herding", family="dataset", description="herding selection in the feature space of a trained ConvNet (baseline)",
                 injected=("ctx",))
class Herding(DatasetMethod):
    iterative = False

    def __init__(self, ctx: DistillContext, train_epochs: Annotated[int, Field(ge=0)] = 10, lr: float = 0.01):
        super().__init__(ctx)
        self.train_epochs, self.lr = train_epochs, lr

    def setup(self) -> None:
        ctx = self.ctx
        net = ctx.make_net(ctx.seed).to(ctx.device)
        if self.train_epochs:
            opt = torch.optim.SGD(net.parameters(), lr=self.lr, momentum=0.9, weight_decay=5e-4)
            for _ in range(self.train_epochs):
                order = torch.randperm(len(ctx.x), generator=ctx.gen).to(ctx.x.device)
                for i in range(0, len(order), 256):
                    idx = order[i:i + 256]
                    loss = F.cross_entropy(net(ctx.x[idx]), ctx.y[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
        net.eval()
        xs, ys = [], []
        correct = 0
        with torch.no_grad():
            for c, idx in enumerate(ctx.by_class):
                chunks = [ctx.x[idx[i:i + 512]] for i in range(0, len(idx), 512)]
                feats = torch.cat([embed(net, x) for x in chunks])                       # (N_c, D)
                correct += sum(int((net(x).argmax(-1) == c).sum()) for x in chunks)
                pick = idx[torch.tensor(herd(feats, ctx.ipc), dtype=torch.long)]
                xs.append(ctx.x[pick])
                ys.append(torch.full((len(pick),), c, dtype=torch.long, device=ctx.x.device))
        # how well the embedder separates the classes: its accuracy on the real training images
        self.embedder_accuracy = correct / len(ctx.x)
        self.set = SyntheticSet(torch.cat(xs), torch.cat(ys))

    def result(self) -> SyntheticSet:
        return self.set
