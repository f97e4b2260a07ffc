"""In-memory data sets, deterministic batch order, and a fast tensor loader.

Batches are dicts: {"x": (B, ...) float, "y": (B,) long (-1 = no label), "idx": (B,) long}.
`idx` is the sample id used by the teacher-output cache.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor


def tensor_fingerprint(*tensors: Tensor) -> str:
    """sha256 over the tensors' shapes, dtypes and values (16 hex digits)."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class ArrayDataset:
    """Tensors held in memory. `y` = -1 marks a sample whose label the learner may not use."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def batch(self, idx: Tensor) -> dict[str, Tensor]:
        return {"x": self.x[idx], "y": self.y[idx], "idx": idx}

    def fingerprint(self) -> str:
        """sha256 over inputs and labels: identifies the data for caches."""
        return tensor_fingerprint(self.x, self.y)

    def with_labels(self, y: Tensor) -> ArrayDataset:
        return ArrayDataset(self.x, y)


@dataclass
class DataBundle:
    """What a data set builder returns.

    train: the learner's view (labels of unlabeled samples are -1);
    teacher_train: the same samples with every label (what a teacher trained elsewhere saw);
    test: held-out evaluation data.
    """

    name: str
    train: ArrayDataset
    test: ArrayDataset
    num_classes: int
    input_shape: tuple[int, ...]
    teacher_train: ArrayDataset | None = None
    class_names: list[str] = field(default_factory=list)
    val: ArrayDataset | None = None  # held out of train, labeled: for choosing the best epoch

    def __post_init__(self) -> None:
        if self.teacher_train is None:
            self.teacher_train = self.train

    @property
    def labeled_fraction(self) -> float:
        return float((self.train.y >= 0).float().mean())


class BatchSampler:
    """Batches of indices in an order fixed by (seed, epoch), so a resumed run sees the same order.

    With `world > 1` each rank takes its contiguous slice of every global batch (the global batch
    is `batch_size`; it must divide by `world`).
    """

    def __init__(self, n: int, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, rank: int = 0, world: int = 1):
        if batch_size % world:
            raise ValueError(f"batch_size {batch_size} must be divisible by the number of processes {world}")
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.drop_last, self.rank, self.world = drop_last, rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full + (1 if rest and not self.drop_last and self.world == 1 else 0)

    def __iter__(self) -> Iterator[Tensor]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        per_rank = self.batch_size // self.world
        for b in range(len(self)):
            chunk = order[b * self.batch_size : (b + 1) * self.batch_size]
            if self.world > 1:
                chunk = chunk[self.rank * per_rank : (self.rank + 1) * per_rank]
            yield chunk


class TensorLoader:
    """Iterates an ArrayDataset in batches (no per-sample collation: fast for in-memory data)."""

    def __init__(self, dataset: ArrayDataset, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, rank: int = 0, world: int = 1):
        self.dataset = dataset
        self.sampler = BatchSampler(len(dataset), batch_size, shuffle=shuffle, seed=seed,
                                    drop_last=drop_last, rank=rank, world=world)

    @property
    def batch_size(self) -> int:
        return self.sampler.batch_size

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        for idx in self.sampler:
            yield self.dataset.batch(idx)


def split_labeled(y: Tensor, fraction: float, seed: int) -> Tensor:
    """Boolean mask keeping `fraction` of the samples of each class (at least one per class)."""
    if fraction >= 1.0:
        return torch.ones_like(y, dtype=torch.bool)
    g = torch.Generator().manual_seed(seed)
    keep = torch.zeros_like(y, dtype=torch.bool)
    for c in y.unique():
        where = (y == c).nonzero().flatten()
        n = max(1, round(fraction * len(where)))
        keep[where[torch.randperm(len(where), generator=g)[:n]]] = True
    return keep


def make_bundle(name: str, x_tr: Tensor, y_tr: Tensor, x_te: Tensor, y_te: Tensor, num_classes: int,
                labeled_fraction: float = 1.0, label_seed: int = 0,
                class_names: list[str] | None = None, val_fraction: float = 0.0) -> DataBundle:
    """Build a bundle; `labeled_fraction` < 1 hides the labels of the rest of the training set;
    `val_fraction` > 0 holds a stratified, labeled validation split out of the training set."""
    val = None
    if val_fraction > 0:
        in_val = split_labeled(y_tr, val_fraction, label_seed + 7919)
        val = ArrayDataset(x_tr[in_val], y_tr[in_val])
        x_tr, y_tr = x_tr[~in_val], y_tr[~in_val]
    full = ArrayDataset(x_tr, y_tr)
    keep = split_labeled(y_tr, labeled_fraction, label_seed)
    learner = full.with_labels(torch.where(keep, y_tr, torch.full_like(y_tr, -1)))
    return DataBundle(name, learner, ArrayDataset(x_te, y_te), num_classes, tuple(x_tr.shape[1:]),
                      teacher_train=full, class_names=class_names or [str(i) for i in range(num_classes)], val=val)
