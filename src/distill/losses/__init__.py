"""Pure loss functions over tensors, shared by every family. See each module's docstrings for shapes."""
from distill.losses.divergences import (
    DIVERGENCES,
    divergence,
    forward_kl,
    generalized_jsd,
    reverse_kl,
    skew_kl,
    skew_reverse_kl,
    sparse_divergence,
    tvd,
)

__all__ = [
    "DIVERGENCES",
    "divergence",
    "forward_kl",
    "generalized_jsd",
    "reverse_kl",
    "skew_kl",
    "skew_reverse_kl",
    "sparse_divergence",
    "tvd",
]
