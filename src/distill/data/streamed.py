"""Registered data sets that stream from disk: class-per-folder images and Hugging Face `datasets`.

Their builders return a `SourceBundle` of sources (nothing decoded yet); the classifier runner
wraps each split in a `ViewDataset` with the recipe's `data.transforms` and reads it through a
torch DataLoader (`data.num_workers`, pinned memory on GPUs).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import DirectoryPath, Field
from typing_extensions import Annotated

from distill.data.base import split_labeled
from distill.data.stream import HFImageSource, ImageFolderSource, Subset, TarShardSource
from distill.errors import ConfigError
from distill.registry import register_dataset


@dataclass
class SourceBundle:
    """What a streamed data set builder returns: sources for train / test (/ val), and the learner's
    train labels (-1 hides a label)."""

    name: str
    train: Any
    test: Any
    num_classes: int
    class_names: list[str] = field(default_factory=list)
    val: Any = None
    train_labels: torch.Tensor | None = None  # the learner's view; None = every label


def _split(n_labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    return split_labeled(n_labels, fraction, seed)


def finish_bundle(name: str, train, test, num_classes: int, class_names: list[str], *, val_fraction: float,
                  labeled_fraction: float, seed: int) -> SourceBundle:
    """Hold a stratified validation split out of `train` and hide labels for `labeled_fraction` < 1."""
    val = None
    if val_fraction > 0:
        in_val = _split(train.labels, val_fraction, seed + 7919)
        val = Subset(train, in_val.nonzero().flatten())
        train = Subset(train, (~in_val).nonzero().flatten())
    keep = _split(train.labels, labeled_fraction, seed)
    labels = torch.where(keep, train.labels, torch.full_like(train.labels, -1)) if labeled_fraction < 1 else None
    return SourceBundle(name, train, test, num_classes, class_names, val, labels)


@register_dataset("images", family="classifier",
                  description="class-per-folder images streamed from disk (root/train/<class>/*, root/val or test/)")
def images(
    root: DirectoryPath,
    train_dir: str = "train",
    test_dir: str | None = Field(None, description="default: val, else test, else a split of train"),
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1,
    val_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.1,
    labeled_fraction: Annotated[float, Field(gt=0, le=1)] = 1.0,
    seed: int = 0,
) -> SourceBundle:
    """Images are opened when a batch needs them; only paths and labels are held in memory."""
    root = Path(root)
    tr = root / train_dir if (root / train_dir).is_dir() else root
    train = ImageFolderSource(tr)
    te_dir = root / test_dir if test_dir else next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    if test_dir and not te_dir.is_dir():
        raise ConfigError(f"data.params.test_dir: {str(te_dir)!r} is not a folder.")
    if te_dir is not None and tr != root:
        test = ImageFolderSource(te_dir, classes=train.classes)
    else:  # one folder: a stratified test split of it
        in_test = _split(train.labels, test_fraction, seed + 104729)
        test = Subset(train, in_test.nonzero().flatten())
        train = Subset(train, (~in_test).nonzero().flatten())
    classes = train.classes if hasattr(train, "classes") else train.source.classes
    return finish_bundle("images", train, test, len(classes), list(classes),
                         val_fraction=val_fraction, labeled_fraction=labeled_fraction, seed=seed)


def load_hf(path: str, split: str, where: str):
    """A split of a Hugging Face data set: a folder written by `save_to_disk`, a local data folder or
    files that `load_dataset` reads, or a hub id (downloads; offline it says how to give a folder)."""
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"{where}: hf_images needs the `datasets` package (pip install 'distill[data]').") from None
    p = Path(path).expanduser()
    try:
        if p.is_dir() and ((p / "dataset_dict.json").is_file() or (p / "state.json").is_file()):
            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise ConfigError(f"{where}: {path} has splits {', '.join(ds)}, not {split!r}.")
                ds = ds[split]
            return ds
        return datasets.load_dataset(str(p) if p.exists() else path, split=split)
    except ConfigError:
        raise
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"{where}: cannot load split {split!r} of {path!r} ({str(e).splitlines()[0][:200]}).") from None
    except (OSError, ConnectionError) as e:
        raise ConfigError(f"{where}: {path!r} could not be loaded ({type(e).__name__}); offline, save the data set "
                          "with `save_to_disk` elsewhere and give that folder.") from None


@register_dataset("hf_images", family="classifier",
                  description="a Hugging Face `datasets` image data set (save_to_disk folder, data folder or hub id)")
def hf_images(
    path: str,
    train_split: str = "train",
    test_split: str = "test",
    image_column: str = "image",
    label_column: str = "label",
    val_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.1,
    labeled_fraction: Annotated[float, Field(gt=0, le=1)] = 1.0,
    seed: int = 0,
) -> SourceBundle:
    tr = load_hf(path, train_split, "data.params.train_split")
    te = load_hf(path, test_split, "data.params.test_split")
    train, test = HFImageSource(tr, image_column, label_column), HFImageSource(te, image_column, label_column)
    feat = tr.features.get(label_column)
    names = list(getattr(feat, "names", None) or [])
    num_classes = len(names) or int(max(train.labels.max(), test.labels.max())) + 1
    return finish_bundle("hf_images", train, test, num_classes, names or [str(i) for i in range(num_classes)],
                         val_fraction=val_fraction, labeled_fraction=labeled_fraction, seed=seed)


@register_dataset("webdataset", family="classifier",
                  description="WebDataset tar shards (<key>.jpg/png + <key>.cls), read by offset from disk")
def webdataset(
    train: str = Field(..., description="train shards, e.g. data/train-{000..099}.tar"),
    test: str = Field(..., description="test shards"),
    num_classes: int | None = Field(None, ge=2, description="default: the largest label + 1"),
    label_key: str = "cls",
    image_key: str | None = Field(None, description="the image member's extension (default: the first of jpg, png, ...)"),
    val_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.1,
    labeled_fraction: Annotated[float, Field(gt=0, le=1)] = 1.0,
    seed: int = 0,
) -> SourceBundle:
    tr = TarShardSource(train, label_key, image_key)
    te = TarShardSource(test, label_key, image_key)
    n = num_classes or int(max(tr.labels.max(), te.labels.max())) + 1
    return finish_bundle("webdataset", tr, te, n, [str(i) for i in range(n)], val_fraction=val_fraction,
                         labeled_fraction=labeled_fraction, seed=seed)
