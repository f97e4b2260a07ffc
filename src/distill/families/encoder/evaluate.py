"""How close a student encoder is to its teacher on held-out text: Spearman correlation between
the two models' cosine similarities over all pairs of held-out sentences, retrieval agreement
(mean overlap of the top-k neighbours of each held-out sentence), and CPU encode throughput."""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from distill.families.encoder.data import collate


@torch.no_grad()
def batched_output(model: nn.Module, rows: list[list[int]], pad_id: int, batch_size: int, device,
                   key: str) -> torch.Tensor:
    """One output of the model (`embedding`, `logits`, ...) for every row, (N, ...) in row order, in
    eval mode (the model's mode is restored)."""
    was = model.training
    model.eval()
    out = []
    for i in range(0, len(rows), batch_size):
        b = collate(rows[i:i + batch_size], pad_id)
        out.append(model(b["input_ids"].to(device), b["attention_mask"].to(device))[key].float().cpu())
    model.train(was)
    return torch.cat(out)


def encode(model: nn.Module, rows: list[list[int]], pad_id: int, batch_size: int, device) -> torch.Tensor:
    """L2-normalised sentence embeddings (N, D) in row order."""
    return F.normalize(batched_output(model, rows, pad_id, batch_size, device, "embedding"), dim=-1)


def spearman_of_similarities(e_s: torch.Tensor, e_t: torch.Tensor) -> float:
    """Spearman rho between student and teacher cosines over all pairs i < j. (N, Ds), (N, Dt)."""
    from scipy.stats import spearmanr

    iu = torch.triu_indices(e_s.shape[0], e_s.shape[0], 1)
    return float(spearmanr((e_s @ e_s.t())[iu[0], iu[1]].numpy(), (e_t @ e_t.t())[iu[0], iu[1]].numpy())[0])


def topk_overlap(e_s: torch.Tensor, e_t: torch.Tensor, k: int) -> float:
    """Mean |top-k_s(i) & top-k_t(i)| / k over queries i, neighbours among the others (self excluded)."""
    n = e_s.shape[0]
    k = min(k, n - 1)
    eye = torch.eye(n, dtype=torch.bool)
    ns = (e_s @ e_s.t()).masked_fill(eye, -2).topk(k, -1).indices
    nt = (e_t @ e_t.t()).masked_fill(eye, -2).topk(k, -1).indices
    hits = (ns[:, :, None] == nt[:, None, :]).any(-1).float().sum(-1)
    return float(hits.mean() / k)


@torch.no_grad()
def throughput(model: nn.Module, rows: list[list[int]], pad_id: int, batch_size: int, device, repeats: int = 2) -> float:
    """Sentences per second (best of `repeats` after one warm-up pass)."""
    encode(model, rows[:batch_size], pad_id, batch_size, device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        encode(model, rows, pad_id, batch_size, device)
        best = min(best, time.perf_counter() - t0)
    return len(rows) / best


def agreement(e_s: torch.Tensor, e_t: torch.Tensor, pair_sentences: int, k: int) -> dict[str, float]:
    n = min(pair_sentences, e_s.shape[0])
    return {"spearman": spearman_of_similarities(e_s[:n], e_t[:n]), f"top{k}_overlap": topk_overlap(e_s, e_t, k)}
