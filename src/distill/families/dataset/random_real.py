"""Baseline: `ipc` real training images per class drawn at random (the floor every method must beat)."""
from __future__ import annotations

from distill.families.dataset.base import DatasetMethod, DistillContext, SyntheticSet
from distill.registry import register_method


@register_method("random_real", family="dataset", description="random real images per class (baseline)",
                 injected=("ctx",))
class RandomReal(DatasetMethod):
    iterative = False

    def __init__(self, ctx: DistillContext):
        super().__init__(ctx)

    def setup(self) -> None:
        self.set = self.ctx.random_real_set()

    def result(self) -> SyntheticSet:
        return self.set
