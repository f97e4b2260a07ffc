"""Accuracy, negative log-likelihood and expected calibration error from logits."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per confidence bin: (mean confidence, accuracy, count). probs (N, C), labels (N,)."""
    conf, pred = probs.max(-1)
    correct = (pred == labels).float()
    edges = torch.linspace(0, 1, n_bins + 1)
    which = torch.bucketize(conf, edges[1:-1], right=True)  # (N,) in [0, n_bins)
    count = torch.bincount(which, minlength=n_bins).float()
    conf_sum = torch.bincount(which, weights=conf, minlength=n_bins)
    acc_sum = torch.bincount(which, weights=correct, minlength=n_bins)
    safe = count.clamp(min=1)
    return conf_sum / safe, acc_sum / safe, count


def ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Expected calibration error (Guo et al. 2017): sum_b |B|/N |acc(b) - conf(b)|, equal-width bins."""
    conf, acc, count = reliability_bins(probs, labels, n_bins)
    return float(((conf - acc).abs() * count).sum() / count.sum().clamp(min=1))


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> dict[str, float]:
    """accuracy (%), nll (nats/sample), ece (%) from logits (N, C) and labels (N,)."""
    logits = logits.float()
    probs = logits.softmax(-1)
    return {
        "accuracy": 100.0 * float((logits.argmax(-1) == labels).float().mean()),
        "nll": float(F.cross_entropy(logits, labels)),
        "ece": 100.0 * ece(probs, labels, n_bins),
    }


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 512,
            device: str | torch.device = "cpu") -> torch.Tensor:
    """Logits (N, C) for inputs (N, ...), in eval mode; the model's mode is restored after."""
    was_training = model.training
    model.eval()
    out = [model(x[i:i + batch_size].to(device)).float().cpu() for i in range(0, x.shape[0], batch_size)]
    model.train(was_training)
    return torch.cat(out)
