"""Fashion-MNIST (60k train / 10k test, 28x28 grey, 10 classes; MIT licence).

Looked up in order: `root` if given, `$DISTILL_FASHION_MNIST`, the Debian package
`dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist), a previous download in the cache;
else downloaded from the original URLs. If all fail, the error says how to get it.
"""
from __future__ import annotations

import gzip
import os
import struct
import urllib.request
from pathlib import Path

import numpy as np
import torch
from pydantic import Field
from typing_extensions import Annotated

from distill.data.base import DataBundle, make_bundle
from distill.errors import DistillError
from distill.registry import register_dataset

FILES = {
    "train_x": "train-images-idx3-ubyte.gz",
    "train_y": "train-labels-idx1-ubyte.gz",
    "test_x": "t10k-images-idx3-ubyte.gz",
    "test_y": "t10k-labels-idx1-ubyte.gz",
}
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): big-endian header, then uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        zero, dtype, ndim = struct.unpack(">HBB", f.read(4))
        if zero != 0 or dtype != 0x08:
            raise DistillError(f"{path}: not an IDX file of unsigned bytes")
        shape = struct.unpack(">" + "I" * ndim, f.read(4 * ndim))
        data = np.frombuffer(f.read(), dtype=np.uint8)
    if data.size != int(np.prod(shape)):
        raise DistillError(f"{path}: truncated ({data.size} values for shape {shape})")
    return data.reshape(shape)


def candidate_dirs(root: str | None) -> list[Path]:
    dirs = [Path(root)] if root else []
    if os.environ.get("DISTILL_FASHION_MNIST"):
        dirs.append(Path(os.environ["DISTILL_FASHION_MNIST"]))
    dirs += [DEBIAN_DIR, Path(os.environ.get("DISTILL_CACHE", "runs/cache")) / "fashion-mnist"]
    return dirs


def find_or_download(root: str | None = None, download: bool = True) -> Path:
    for d in candidate_dirs(root):
        if all((d / f).is_file() for f in FILES.values()):
            return d
    target = candidate_dirs(None)[-1]
    errors = []
    if download:
        target.mkdir(parents=True, exist_ok=True)
        for fname in FILES.values():
            try:
                tmp = target / (fname + ".part")
                urllib.request.urlretrieve(URL + fname, tmp)
                os.replace(tmp, target / fname)
            except Exception as e:  # offline machines land here
                errors.append(f"{fname}: {e}")
                break
        if not errors:
            return target
    tried = ", ".join(str(d) for d in candidate_dirs(root))
    raise DistillError(
        "fashion_mnist: files not found (looked in " + tried + ")"
        + (f" and the download failed ({errors[0]})" if errors else "")
        + ". Install them with `apt-get install -y dataset-fashion-mnist`, or put the four IDX .gz "
        "files in a folder and pass data.params.root=FOLDER."
    )


def available() -> bool:
    return any(all((d / f).is_file() for f in FILES.values()) for d in candidate_dirs(None))


@register_dataset("fashion_mnist", family="any", description="Fashion-MNIST 28x28 (60k/10k, 10 classes); Debian package or download")
def fashion_mnist(
    root: str | None = None,
    labeled_fraction: Annotated[float, Field(gt=0, le=1)] = 1.0,
    train_subset: Annotated[int, Field(ge=10)] | None = None,
    test_subset: Annotated[int, Field(ge=10)] | None = None,
    download: bool = True,
    seed: int = 0,
    val_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.0,
) -> DataBundle:
    """Images as (1, 28, 28) floats in [0, 1]. `*_subset` take a seeded random subset (quick runs)."""
    d = find_or_download(root, download)
    arrays = {k: read_idx(d / f) for k, f in FILES.items()}
    x_tr = torch.from_numpy(arrays["train_x"].copy()).float().div_(255).unsqueeze(1)
    y_tr = torch.from_numpy(arrays["train_y"].astype(np.int64))
    x_te = torch.from_numpy(arrays["test_x"].copy()).float().div_(255).unsqueeze(1)
    y_te = torch.from_numpy(arrays["test_y"].astype(np.int64))
    g = torch.Generator().manual_seed(seed)
    if train_subset:
        keep = torch.randperm(len(y_tr), generator=g)[:train_subset]
        x_tr, y_tr = x_tr[keep], y_tr[keep]
    if test_subset:
        keep = torch.randperm(len(y_te), generator=g)[:test_subset]
        x_te, y_te = x_te[keep], y_te[keep]
    return make_bundle("fashion_mnist", x_tr, y_tr, x_te, y_te, 10, labeled_fraction=labeled_fraction,
                       label_seed=seed, class_names=CLASSES, val_fraction=val_fraction)
