"""Class-per-folder images (root/<class>/<image>), loaded into memory at a fixed size."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import DirectoryPath, Field
from typing_extensions import Annotated

from distill.data.base import DataBundle, make_bundle
from distill.errors import DistillError
from distill.registry import register_dataset

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def _load_split(root: Path, classes: list[str], size: int, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image

    xs, ys = [], []
    for c, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            continue
        for p in sorted(folder.iterdir()):
            if p.suffix.lower() not in EXTENSIONS:
                continue
            with Image.open(p) as im:
                im = im.convert(mode).resize((size, size))
                arr = np.asarray(im, dtype=np.float32) / 255.0
            xs.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
            ys.append(c)
    if not xs:
        raise DistillError(f"image_folder: no images ({', '.join(sorted(EXTENSIONS))}) under {root}/<class>/")
    return torch.from_numpy(np.stack(xs)), torch.tensor(ys, dtype=torch.long)


@register_dataset("image_folder", family="any", description="class-per-folder images (root/train/<class>/*, optional root/test/)")
def image_folder(
    root: DirectoryPath,
    size: Annotated[int, Field(ge=4)] = 32,
    mode: Literal["L", "RGB"] = "RGB",
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2,
    labeled_fraction: Annotated[float, Field(gt=0, le=1)] = 1.0,
    seed: int = 0,
    val_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.0,
) -> DataBundle:
    """Uses root/train and root/test when present; otherwise root/<class> split by `test_fraction`."""
    root = Path(root)
    train_dir = root / "train" if (root / "train").is_dir() else root
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    if not classes:
        raise DistillError(f"image_folder: no class folders in {train_dir}")
    x, y = _load_split(train_dir, classes, size, mode)
    if (root / "test").is_dir():
        x_te, y_te = _load_split(root / "test", classes, size, mode)
        x_tr, y_tr = x, y
    else:
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(y), generator=g)
        n_te = max(1, int(round(test_fraction * len(y))))
        x_te, y_te, x_tr, y_tr = x[perm[:n_te]], y[perm[:n_te]], x[perm[n_te:]], y[perm[n_te:]]
    return make_bundle("image_folder", x_tr, y_tr, x_te, y_te, len(classes), labeled_fraction=labeled_fraction,
                       label_seed=seed, class_names=classes, val_fraction=val_fraction)
