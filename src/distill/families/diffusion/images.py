"""Image data for the diffusion family: scikit-learn digits upsampled to size x size, in [-1, 1].

`sample(n, generator)` gives images (n, 1, S, S) like the 2-D toys' sources; `sample_labeled`
also gives their classes (n,), for class-conditional teachers and students.
"""
from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor
from typing_extensions import Annotated

from distill.registry import register_dataset


class ImageSource:
    """Draws (with replacement) from a fixed image set x (N, C, H, W) in [-1, 1] with labels y (N,)."""

    def __init__(self, x: Tensor, y: Tensor, num_classes: int, name: str = "images"):
        self.x, self.y, self.num_classes, self.name = x, y, num_classes, name
        self.dim = tuple(x.shape[1:])

    def __repr__(self) -> str:
        return f"ImageSource({self.name!r}, {len(self.x)} images {self.dim})"

    def sample_labeled(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        idx = torch.randint(0, len(self.x), (n,), generator=generator)
        return self.x[idx], self.y[idx]

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.sample_labeled(n, generator)[0]


@register_dataset("digits_images", family="diffusion",
                  description="scikit-learn digits upsampled to size x size in [-1, 1], with labels (train split)")
def digits_images(size: Annotated[int, Field(ge=8)] = 16, split: str = "train", split_seed: int = 0) -> ImageSource:
    from distill.data.digits import digits

    bundle = digits(layout="image", size=size, split_seed=split_seed)
    ds = bundle.teacher_train if split == "train" else bundle.test  # every label kept
    x, y = ds.x, ds.y
    return ImageSource(x.clamp(0, 1) * 2 - 1, y, 10, f"digits{size}-{split}")



@register_dataset("fashion_mnist_images", family="diffusion",
                  description="Fashion-MNIST 28x28 in [-1, 1], with labels (local files only: the Debian package "
                              "dataset-fashion-mnist or data.params.root)")
def fashion_mnist_images(split: str = "train", subset: Annotated[int, Field(ge=10)] | None = None,
                         root: str | None = None, seed: int = 0) -> ImageSource:
    """Fashion-MNIST images (N, 1, 28, 28) in [-1, 1]; `subset` keeps a seeded random subset of the split."""
    from distill.data.fashion_mnist import fashion_mnist

    if split not in ("train", "test"):
        raise ValueError(f"fashion_mnist_images: split must be 'train' or 'test', got {split!r}")
    kw = {"train_subset": subset} if split == "train" else {"test_subset": subset}
    bundle = fashion_mnist(root=root, download=False, seed=seed, **kw)
    ds = bundle.train if split == "train" else bundle.test
    return ImageSource(ds.x * 2 - 1, ds.y, 10, f"fmnist28-{split}")
