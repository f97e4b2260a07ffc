import torch

from distill.families.dataset.base import DistillContext
from distill.models.io import build_model


def tiny_ctx(ipc: int = 2, per_class: int = 6, width: int = 8, seed: int = 0) -> DistillContext:
    g = torch.Generator().manual_seed(123)
    x = torch.randn(10 * per_class, 1, 8, 8, generator=g)
    y = torch.arange(10).repeat(per_class)

    def make(s: int):
        torch.manual_seed(s)
        return build_model("convnet", {"width": width}, (1, 8, 8), 10, family="dataset")

    return DistillContext(x, y, 10, ipc, make, torch.device("cpu"), seed, "convnet", {"width": width})
