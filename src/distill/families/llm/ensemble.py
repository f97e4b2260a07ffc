"""An ensemble of causal LMs that share one tokenizer: next-token probabilities averaged,

    p(x_t | x_<t) = sum_i w_i p_i(x_t | x_<t),   w_i >= 0, sum_i w_i = 1.

`MixtureLM` behaves like a causal LM whose `logits` are the mixture's log-probabilities, so the
ordinary evaluation (`lm_metrics`: loss, bits per byte) reads it unchanged. Members with different
tokenizers cannot be mixed this way; distil them into one tokenizer first (e.g. byte-level
students through `alm`). By convexity of -log, the mixture's NLL at each token is at most the
w-weighted mean of the members' NLLs.

With `posterior=True` the weights are updated by Bayes' rule on the text read so far in the
document (Bayesian model averaging): w_i(t) is proportional to w_i prod_{s<t} p_i(x_s | x_<s), so
the document's probability is sum_i w_i p_i(document), at most -log w_i nats (per document) worse
than any member, and the expert of the document's domain takes over after a few tokens.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class MixtureOutput:
    logits: torch.Tensor  # (B, T, V): log of the averaged probabilities (log_softmax leaves it unchanged)


Weights = Sequence[float] | torch.Tensor | None


def log_weights(weights: Weights, m: int) -> torch.Tensor:
    """(m,) log of the weights normalised to sum to 1 (uniform when None)."""
    w = torch.full((m,), 1.0 / m) if weights is None else torch.as_tensor(weights, dtype=torch.float32).flatten()
    if w.numel() != m or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ValueError(f"ensemble: need {m} non-negative weights with a positive sum, got {w.tolist()}")
    return (w / w.sum()).log()


def stacked_log_probs(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Members' logits, each (..., V) -> their log-softmax in fp32, stacked (M, ..., V)."""
    if not logits:
        raise ValueError("ensemble: no members")
    if any(z.shape != logits[0].shape for z in logits):
        raise ValueError(f"ensemble: members disagree in shape {[tuple(z.shape) for z in logits]}; "
                         "an ensemble needs one tokenizer (same vocabulary) for all members")
    return torch.stack([F.log_softmax(z.float(), -1) for z in logits])


def mixture_log_probs(logits: Sequence[torch.Tensor], weights: Weights = None) -> torch.Tensor:
    """log sum_i w_i softmax(logits_i) over the last axis, in fp32; each (..., V) -> (..., V)."""
    lp = stacked_log_probs(logits)  # (M, ..., V)
    log_w = log_weights(weights, len(logits)).to(lp.device)
    return torch.logsumexp(lp + log_w.view(-1, *([1] * (lp.dim() - 1))), 0)


def posterior_log_weights(log_probs: torch.Tensor, input_ids: torch.Tensor, position_ids: torch.Tensor | None,
                          weights: Weights = None) -> torch.Tensor:
    """Log posterior weights (M, B, T) of M members given each document's tokens before t + 1.

    log_probs (M, B, T, V): members' next-token log-probs; input_ids (B, T); position_ids (B, T)
    restart at 0 where a packed document starts (None: one document per row)."""
    M, B, T, _ = log_probs.shape
    pos = torch.arange(T, device=input_ids.device).expand(B, T) if position_ids is None else position_ids
    # obs[:, :, s]: log p_i of the token that follows position s, when it is in the same document
    obs = log_probs[:, :, :-1].gather(-1, input_ids[None, :, 1:, None].expand(M, B, T - 1, 1)).squeeze(-1)
    obs = obs * (pos[:, 1:] == pos[:, :-1] + 1)
    c = F.pad(obs.cumsum(-1), (1, 0))  # (M, B, T): sum over s < t
    start = (torch.arange(T, device=pos.device) - pos).clamp(min=0)  # (B, T): where t's document starts
    seen = c - c.gather(-1, start[None].expand(M, B, T))
    return F.log_softmax(log_weights(weights, M).to(log_probs.device).view(M, 1, 1) + seen, 0)


class MixtureLM(nn.Module):
    """Causal LMs with one tokenizer -> one LM whose next-token distribution is their weighted average
    (fixed weights, or with `posterior=True` updated by Bayes' rule along each document)."""

    def __init__(self, members: Sequence[nn.Module], weights: Weights = None, posterior: bool = False):
        super().__init__()
        log_weights(weights, len(members))  # checked now, not at the first forward
        self.members = nn.ModuleList(members)
        self.weights, self.posterior = weights, posterior

    def forward(self, **inputs: Any) -> MixtureOutput:
        logits = [m(**inputs).logits for m in self.members]
        if not self.posterior:
            return MixtureOutput(mixture_log_probs(logits, self.weights))
        lp = stacked_log_probs(logits)  # (M, B, T, V)
        log_w = posterior_log_weights(lp, inputs["input_ids"], inputs.get("position_ids"), self.weights)
        return MixtureOutput(torch.logsumexp(lp + log_w[..., None], 0))


def ensemble_bits_per_byte(members: Sequence[nn.Module], examples, *, pad_id: int, weights: Weights = None,
                           posterior: bool = False, seq_len: int = 256, batch_size: int = 32,
                           device: torch.device | str = "cpu") -> dict[str, Any]:
    """Held-out metrics (loss, bits_per_byte, ...) of the mixture on `examples` (one tokenizer's Examples)."""
    from distill.families.llm.evaluate import lm_metrics

    model = MixtureLM(members, weights, posterior).to(device)
    return lm_metrics(model, examples, pad_id=pad_id, batch_size=batch_size, seq_len=seq_len, device=device)
