"""The classifier family's data: in-memory tensors (the fast path for small sets) or streamed views.

A recipe's data is streamed when its builder returns sources (`images`, `hf_images`) or when it sets
`data.transforms` (then an in-memory set is augmented on the fly too). Either way the runner sees a
`DataBundle` whose splits are `ArrayDataset`s or `ViewDataset`s, and uses the helpers here to get
a loader, predictions and an example input without caring which.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from distill.data.base import ArrayDataset, DataBundle, TensorLoader
from distill.data.stream import StreamLoader, TensorSource, ViewDataset
from distill.data.streamed import SourceBundle
from distill.data.transforms import TransformConfig, ViewTransform, resolve_normalization
from distill.errors import ConfigError
from distill.models.outputs import logits_of


def is_streamed(split: Any) -> bool:
    return isinstance(split, ViewDataset)


def to_views(raw: DataBundle | SourceBundle, tcfg: TransformConfig | None, *, seed: int,
             model_data_config: dict | None) -> DataBundle:
    """Wrap every split in a ViewDataset (train views augmented, the rest eval views)."""
    tcfg = tcfg or TransformConfig(crop="none", hflip=0.0)
    if isinstance(raw, DataBundle):
        train_src = TensorSource(raw.teacher_train.x, raw.teacher_train.y)
        test_src = TensorSource(raw.test.x, raw.test.y)
        val_src = TensorSource(raw.val.x, raw.val.y) if raw.val is not None else None
        learner_labels = raw.train.y
        name, num_classes, names = raw.name, raw.num_classes, raw.class_names
    else:
        train_src, test_src, val_src = raw.train, raw.test, raw.val
        learner_labels = raw.train_labels if raw.train_labels is not None else raw.train.labels
        name, num_classes, names = raw.name, raw.num_classes, raw.class_names
    size = tcfg.size or (model_data_config or {}).get("size")
    if size is None:  # the images' own size (square crops of the shorter side)
        first = train_src.get(0)
        h, w = (first.shape[-2:] if isinstance(first, torch.Tensor) else (first.height, first.width))
        size = int(min(h, w))
    mean, std = resolve_normalization(tcfg, model_data_config)
    resize = tcfg.resize or (model_data_config or {}).get("resize") if tcfg.size is None else tcfg.resize
    if resize:
        tcfg = tcfg.model_copy(update={"resize": int(resize)})
    transform = ViewTransform(tcfg, size=int(size), mean=mean, std=std)
    teacher_train = ViewDataset(train_src, transform, seed=seed, train=True)
    train = teacher_train.with_labels(learner_labels)
    test = ViewDataset(test_src, transform, seed=seed, train=False)
    val = ViewDataset(val_src, transform, seed=seed, train=False) if val_src is not None else None
    try:
        example = test[0] or test[1]
    except Exception as e:
        raise ConfigError(f"data.transforms: the eval transform fails on the first test image "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:200]}).") from None
    shape = tuple(example["x"].shape)
    if mean is not None and len(mean) != shape[0]:
        raise ConfigError(f"data.transforms.normalize: {len(mean)} channel means for {shape[0]}-channel images; "
                          f"set data.transforms.channels: {len(mean)} (or give a mean/std per channel).")
    return DataBundle(name, train, test, num_classes, shape, teacher_train=teacher_train,
                      class_names=list(names), val=val)


def make_loader(split: ArrayDataset | ViewDataset, batch_size: int, *, shuffle: bool, seed: int,
                drop_last: bool = False, rank: int = 0, world: int = 1, num_workers: int = 0,
                pin_memory: bool = False, num_classes: int | None = None) -> TensorLoader | StreamLoader:
    if isinstance(split, ViewDataset):
        mix = None
        if split.train and split.transform.cfg.mixes and num_classes:
            from distill.data.transforms import BatchMix

            mix = BatchMix(split.transform.cfg, num_classes, seed)
        return StreamLoader(split, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last, rank=rank,
                            world=world, num_workers=num_workers, pin_memory=pin_memory, mix=mix)
    return TensorLoader(split, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last, rank=rank, world=world)


@torch.no_grad()
def predict_split(model: nn.Module, split: ArrayDataset | ViewDataset, *, device: str | torch.device = "cpu",
                  batch_size: int = 512, num_workers: int = 0) -> torch.Tensor:
    """Logits (N, C) over a split's eval views, in id order; the model's mode is restored after.
    Samples that fail to decode get NaN rows (they count as wrong)."""
    if isinstance(split, ArrayDataset):
        from distill.eval.metrics import predict

        return predict(model, split.x, batch_size=batch_size, device=device)
    split = split.as_eval() if split.train else split
    was = model.training
    model.eval()
    rows: dict[int, torch.Tensor] = {}
    for b in StreamLoader(split, batch_size, shuffle=False, num_workers=num_workers):
        z = logits_of(model(b["x"].to(device))).float().cpu()
        for i, row in zip(b["idx"].tolist(), z):
            rows[i] = row
    model.train(was)
    c = next(iter(rows.values())).shape[-1]
    out = torch.full((len(split), c), float("nan"))
    for i, row in rows.items():
        out[i] = row
    return out


def example_inputs(split: ArrayDataset | ViewDataset, n: int = 1) -> torch.Tensor:
    """The first `n` inputs of a split as the model sees them (eval views)."""
    if isinstance(split, ArrayDataset):
        return split.x[:n]
    ev = split.as_eval() if split.train else split
    items = [it for it in (ev[i] for i in range(min(len(ev), n + 8))) if it is not None][:n]
    return torch.stack([it["x"] for it in items])


def labels_of(split: ArrayDataset | ViewDataset) -> torch.Tensor:
    return split.y


def hold_out_val(bundle: DataBundle, fraction: float, seed: int) -> DataBundle:
    """A stratified, labeled validation split held out of the training data (learner's and teacher's),
    for choosing the best epoch and the best student without looking at the test set."""
    from distill.data.base import split_labeled
    from distill.data.stream import Subset

    full_y = bundle.teacher_train.y
    in_val = split_labeled(full_y, fraction, seed + 7919)
    keep, val_ids = (~in_val).nonzero().flatten(), in_val.nonzero().flatten()
    if isinstance(bundle.train, ArrayDataset):
        tt = bundle.teacher_train
        val = ArrayDataset(tt.x[val_ids], tt.y[val_ids])
        teacher_train = ArrayDataset(tt.x[keep], tt.y[keep])
        train = ArrayDataset(bundle.train.x[keep], bundle.train.y[keep])
    else:
        src, tr = bundle.teacher_train.source, bundle.teacher_train
        val = ViewDataset(Subset(src, val_ids), tr.transform, seed=tr.seed, train=False)
        teacher_train = ViewDataset(Subset(src, keep), tr.transform, seed=tr.seed, train=True)
        train = teacher_train.with_labels(bundle.train.y[keep])
    return DataBundle(bundle.name, train, bundle.test, bundle.num_classes, bundle.input_shape,
                      teacher_train=teacher_train, class_names=bundle.class_names, val=val)


class OrderedInputs:
    """A split's inputs in id order for the teacher caches: a tensor (in memory), or batches of a
    streamed split's epoch-0 views (used only when its transform draws nothing at random)."""

    def __init__(self, split: ArrayDataset | ViewDataset, num_workers: int = 0):
        self.split, self.num_workers = split, num_workers

    def resolve(self):
        return self.split.x if isinstance(self.split, ArrayDataset) else self

    def __len__(self) -> int:
        return len(self.split)

    def id_batches(self, batch_size: int):
        loader = StreamLoader(self.split, batch_size, shuffle=False, num_workers=self.num_workers)
        loader.set_epoch(0)
        for b in loader:
            yield b["idx"], b["x"]
