"""scikit-learn's 8x8 digits (1797 images, 10 classes): always available, no download."""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from typing_extensions import Annotated

from distill.data.base import DataBundle, make_bundle
from distill.registry import register_dataset


@register_dataset("digits", family="any", description="scikit-learn 8x8 digits (1797 images, 10 classes); always available")
def digits(
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2,
    labeled_fraction: Annotated[float, Field(gt=0, le=1)] = 1.0,
    layout: Literal["flat", "image"] = "image",
    size: Annotated[int, Field(ge=8)] = 8,
    split_seed: int = 0,
    val_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.0,
) -> DataBundle:
    """Stratified train/test split (fixed by `split_seed`); pixels scaled to [0, 1].

    labeled_fraction: share of training images whose labels the student sees (the teacher saw all).
    layout "image" gives (1, size, size) tensors (bilinear upsampling when size > 8); "flat" gives (64,).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32) / 16.0  # (N, 8, 8)
    y = torch.tensor(d.target, dtype=torch.long)
    idx_tr, idx_te = train_test_split(
        torch.arange(len(y)).numpy(), test_size=test_fraction, stratify=y.numpy(), random_state=split_seed
    )
    x = x.unsqueeze(1)
    if size != 8:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    if layout == "flat":
        x = x.flatten(1)
    idx_tr, idx_te = torch.as_tensor(idx_tr), torch.as_tensor(idx_te)
    return make_bundle("digits", x[idx_tr], y[idx_tr], x[idx_te], y[idx_te], 10,
                       labeled_fraction=labeled_fraction, label_seed=split_seed, val_fraction=val_fraction)
