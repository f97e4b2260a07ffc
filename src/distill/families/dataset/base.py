"""What every data-set-distillation method shares: the real data by class, the synthetic set, the
method interface the runner drives.

A method is built as `Method(ctx, **params)`; the runner then calls `setup()` once, `step(it)` for
`iterations` outer iterations (each returns named loss values), and `result()` for the final
`SyntheticSet`. What is optimised (images, soft labels, a learning rate) lives in the method.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.losses.divergences import divergence


@dataclass
class SyntheticSet:
    """images: (N, C, H, W) in the normalised space of the run; labels: (N,) long (hard) or (N, K)
    float logits (soft); lr: an optional learned learning rate for evaluation.

    teacher: a network that relabels every augmented evaluation batch (SRe2L's relabelling, as
    FKD: the soft label follows the crop instead of being fixed per image); `labels` then holds its
    logits on the un-augmented images. teacher_spec: {"name", "params"} of its architecture, so a
    saved set can rebuild it."""

    images: Tensor
    labels: Tensor
    lr: float | None = None
    teacher: nn.Module | None = None
    teacher_spec: dict[str, Any] | None = None

    @property
    def soft(self) -> bool:
        return self.labels.dtype.is_floating_point

    def detach(self) -> SyntheticSet:
        return SyntheticSet(self.images.detach().cpu().clone(), self.labels.detach().cpu().clone(), self.lr,
                            self.teacher, self.teacher_spec)


@dataclass
class DistillContext:
    """Real training data (normalised, on `device`), class count, IPC and a builder of fresh
    networks of the distillation architecture (`make_net(seed)`)."""

    x: Tensor                      # (N, C, H, W)
    y: Tensor                      # (N,)
    num_classes: int
    ipc: int
    make_net: Callable[[int], nn.Module]
    device: torch.device
    seed: int = 0
    model_name: str = "convnet"
    model_params: dict[str, Any] | None = None   # of the distillation architecture (methods may vary it)

    def __post_init__(self) -> None:
        self.by_class = [(self.y == c).nonzero().flatten() for c in range(self.num_classes)]
        self.gen = torch.Generator().manual_seed(self.seed)

    def rand_int(self, n: int) -> int:
        return int(torch.randint(0, n, (), generator=self.gen))

    def real(self, c: int, n: int) -> Tensor:
        """n random real images of class c (fewer if the class is smaller)."""
        idx = self.by_class[c]
        pick = idx[torch.randperm(len(idx), generator=self.gen)[:n]]
        return self.x[pick.to(self.x.device)]

    def random_real_set(self, ipc: int | None = None) -> SyntheticSet:
        ipc = ipc or self.ipc
        xs = [self.real(c, ipc) for c in range(self.num_classes)]
        ys = [torch.full((len(x),), c, dtype=torch.long) for c, x in enumerate(xs)]
        return SyntheticSet(torch.cat(xs).clone(), torch.cat(ys).to(self.x.device))


class DatasetMethod:
    """Base class. Subclasses set `iterative` (False: a selection, `step` is never called) and
    `soft_labels` (True: the set carries teacher logits; the runner then also reports KD from
    `self.teacher` on random real images, so a gain from labels is not credited to images)."""

    iterative = True
    soft_labels = False
    # (tensor attribute, its optimiser attribute) pairs that a checkpoint saves and restores
    learned: tuple[tuple[str, str], ...] = ()

    def __init__(self, ctx: DistillContext):
        self.ctx = ctx
        self.teacher: nn.Module | None = None

    def setup(self) -> None:
        """Initialise the synthetic set (and whatever the method precomputes)."""

    def step(self, it: int, iterations: int) -> dict[str, float]:
        raise NotImplementedError

    def result(self) -> SyntheticSet:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """The `learned` tensors (on CPU) and their optimisers' states."""
        out: dict[str, Any] = {}
        for tensor, opt in self.learned:
            out[tensor] = getattr(self, tensor).detach().cpu()
            out[opt] = getattr(self, opt).state_dict()
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for tensor, opt in self.learned:
            with torch.no_grad():
                getattr(self, tensor).copy_(state[tensor])
            getattr(self, opt).load_state_dict(state[opt])


class ImageMethod(DatasetMethod):
    """A method that learns the pixels of `ipc` images per class, initialised from random real
    images (`init="real"`) or Gaussian noise, optimised with SGD (momentum 0.5, as DC/DM)."""

    learned = (("images", "opt_img"),)

    def __init__(self, ctx: DistillContext, *, lr_img: float, init: str = "real", momentum: float = 0.5):
        super().__init__(ctx)
        self.lr_img, self.init, self.momentum = lr_img, init, momentum

    def setup(self) -> None:
        start = self.ctx.random_real_set()
        if self.init == "noise":
            start.images = torch.randn(start.images.shape, generator=self.ctx.gen).to(start.images.device)
        self.images = start.images.detach().clone().requires_grad_(True)
        self.labels = start.labels
        self.opt_img = torch.optim.SGD([self.images], lr=self.lr_img, momentum=self.momentum)

    def class_images(self, c: int) -> Tensor:
        ipc = self.ctx.ipc
        return self.images[c * ipc:(c + 1) * ipc]

    def random_net_step(self, it: int, term: str) -> dict[str, float]:
        """One update of the images against a fresh frozen random network (seeded by the iteration):
        the sum over classes of `self.class_loss(net, c)` (DM, DataDAM)."""
        ctx = self.ctx
        net = ctx.make_net(ctx.seed * 100_003 + it).to(ctx.device)
        for p in net.parameters():
            p.requires_grad_(False)
        loss = sum(self.class_loss(net, c) for c in range(ctx.num_classes))  # type: ignore[attr-defined]
        self.opt_img.zero_grad()
        loss.backward()
        self.opt_img.step()
        return {term: float(loss.detach())}

    def result(self) -> SyntheticSet:
        return SyntheticSet(self.images.detach().clone(), self.labels.clone())


def soft_or_hard_loss(logits: Tensor, labels: Tensor, temperature: float = 1.0) -> Tensor:
    """CE for hard labels (B,); KL(teacher || student) * T^2 for soft labels (B, K) of logits."""
    if labels.dtype.is_floating_point:
        return divergence(logits, labels, "forward_kl", temperature=temperature) * temperature**2
    return F.cross_entropy(logits, labels)


def match_distance(gs: list[Tensor], gr: list[Tensor]) -> Tensor:
    """Layer-wise gradient-matching distance of DC (Zhao et al., ICLR 2021, eq. 10):
    for each weight tensor reshaped to (out, -1), sum over output units of 1 - cos(gs_i, gr_i).
    Biases and norm parameters (1-d) are skipped, as in the paper."""
    total = gs[0].new_zeros(())
    for a, b in zip(gs, gr):
        if a.dim() == 1:
            continue
        a2, b2 = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
        cos = (a2 * b2).sum(-1) / (a2.norm(dim=-1) * b2.norm(dim=-1) + 1e-6)
        total = total + (1 - cos).sum()
    return total


def embed(net: nn.Module, x: Tensor) -> Tensor:
    """The penultimate features (B, D) of a network with `.embed`, else its output."""
    return net.embed(x) if hasattr(net, "embed") else net(x)


def inherit_params(cls: type) -> type:
    """Expose the parent's keyword parameters of a subclass whose `__init__` forwards `**kw`, so the
    registry validates (and `distill list` shows) them for the subclass too."""
    init, parent = cls.__init__, cls.__mro__[1].__init__
    own = [p for p in inspect.signature(init).parameters.values() if p.kind != p.VAR_KEYWORD]
    names = {p.name for p in own}
    extra = [p for p in inspect.signature(parent).parameters.values()
             if p.name not in names and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    params = own[:2] + [p.replace(kind=p.KEYWORD_ONLY) for p in own[2:] + extra]
    init.__signature__ = inspect.Signature(params)
    init.__annotations__ = {**getattr(parent, "__annotations__", {}), **init.__annotations__}
    return cls
