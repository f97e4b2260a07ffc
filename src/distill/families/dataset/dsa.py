"""Gradient matching with differentiable siamese augmentation (DSA; Zhao & Bilen, ICML 2021):
DC where both the real batch and the synthetic images pass through the same random transform."""
from __future__ import annotations

from distill.families.dataset.dc import GradientMatching
from distill.registry import register_method


@register_method("dsa", family="dataset", description="gradient matching + siamese augmentation (DSA, ICML 2021)",
                 injected=("ctx",))
class DSA(GradientMatching):
    augment = True
