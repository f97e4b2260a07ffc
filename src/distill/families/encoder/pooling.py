"""Sentence pooling of token vectors, with the modes (and names) of sentence-transformers' `Pooling`
module, so a teacher read from a sentence-transformers folder pools as it does there, and a saved
student pools in sentence-transformers as it did here. Several modes are concatenated in order.

Token vectors h (B, T, D), mask (B, T) (1 = real token). Padding may be on either side.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from distill.families.encoder.losses import mean_pool

MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")


def as_modes(pooling: str | Sequence[str]) -> tuple[str, ...]:
    """"mean" | "cls+max" | ["mean", "max"] -> ("mean",) | ("cls", "max") | ("mean", "max"), checked."""
    modes = tuple(pooling.split("+")) if isinstance(pooling, str) else tuple(pooling)
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ValueError(f"pooling: unknown mode(s) {bad or modes} (modes: {', '.join(MODES)})")
    return modes


def _first_real(mask: Tensor) -> Tensor:
    return mask.long().argmax(1)  # (B,) index of the first real token (left padding skipped)


def pool(h: Tensor, mask: Tensor, pooling: str | Sequence[str] = "mean") -> Tensor:
    """Pooled sentence vectors. (B, T, D), (B, T) -> (B, D * number of modes)."""
    m = mask.to(h.dtype).unsqueeze(-1)                                    # (B, T, 1)
    out = []
    for mode in as_modes(pooling):
        if mode == "cls":      # the first real token
            out.append(h[torch.arange(h.shape[0], device=h.device), _first_real(mask)])
        elif mode == "max":    # over real tokens only
            out.append(h.masked_fill(m == 0, float("-inf")).amax(1))
        elif mode == "mean":
            out.append(mean_pool(h, mask))
        elif mode == "mean_sqrt_len_tokens":  # sum / sqrt(length): longer texts get longer vectors
            out.append((h * m).sum(1) / m.sum(1).clamp(min=1e-9).sqrt())
        elif mode == "weightedmean":  # weight 1, 2, ... from the first real token (later tokens count more)
            w = torch.arange(1, h.shape[1] + 1, device=h.device, dtype=h.dtype)[None, :] - _first_real(mask)[:, None]
            w = (w * mask.to(h.dtype)).unsqueeze(-1)                      # (B, T, 1)
            out.append((h * w).sum(1) / w.sum(1).clamp(min=1e-9))
        else:                  # lasttoken: the last real token
            t = h.shape[1]
            last = t - 1 - mask.long().flip(1).argmax(1)                  # (B,)
            out.append((h * m)[torch.arange(h.shape[0], device=h.device), last])
    return out[0] if len(out) == 1 else torch.cat(out, -1)
