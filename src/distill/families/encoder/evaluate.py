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


def pair_throughput(model: nn.Module, queries: list[str], passages: list[str], max_length: int, batch_size: int,
                    repeats: int = 2) -> float:
    """Pairs per second of a cross-encoder (`cross.CrossScorer`), best of `repeats` after a warm-up."""
    model.score(queries[:batch_size], passages[:batch_size], max_length, batch_size)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.score(queries, passages, max_length, batch_size)
        best = min(best, time.perf_counter() - t0)
    return len(queries) / best


def cross_agreement(model: nn.Module, teacher: nn.Module | None, held: list[dict], max_length: int,
                    batch_size: int, timing: bool = True, cache: dict | None = None) -> dict[str, float]:
    """A cross-encoder student against its teacher on held-out ranking examples (`examples.py`): Spearman
    between the two models' logits over every (query, passage) pair (without a teacher: between the
    student's margins and the data's), the share of (positive, negative) margins whose sign the student
    gets right, pairs per second and the speedup over the teacher. `cache` keeps the teacher's side."""
    from scipy.stats import spearmanr

    from distill.families.encoder.examples import target_margins

    cache = {} if cache is None else cache
    if teacher is None and held[0]["label"] is None:
        from distill.errors import ConfigError

        raise ConfigError("a cross-encoder student is compared with teacher.cross_encoder, or with the data's label "
                          "column; set one of them.")
    p = len(held[0]["passages"])
    queries = [e["query"] for e in held for _ in e["passages"]]
    passages = [x for e in held for x in e["passages"]]
    s = model.score(queries, passages, max_length, batch_size).view(len(held), p)            # (N, P)
    if "t" not in cache:
        if teacher is not None:
            cache["t"] = teacher.score(queries, passages, max_length, batch_size).view(len(held), p)
        elif isinstance(held[0]["label"], list) and len(held[0]["label"]) == p or p == 1:
            cache["t"] = torch.tensor([e["label"] if isinstance(e["label"], list) else [e["label"]] for e in held])
        else:
            cache["t"] = None
            cache["m"] = target_margins([e["label"] for e in held], p - 1)
    t = cache["t"]
    m_t = cache["m"] if t is None else t[:, :1] - t[:, 1:]                                   # (N, P - 1)
    m_s = s[:, :1] - s[:, 1:]
    a, b = (s.flatten(), t.flatten()) if t is not None else (m_s.flatten(), m_t.flatten())
    out = {"spearman": float(spearmanr(a.numpy(), b.numpy())[0]), "pairs": len(queries)}
    if p > 1:
        out["margin_agreement"] = float(((m_s > 0) == (m_t > 0)).float().mean())
    if timing:
        out["sentences_per_s"] = pair_throughput(model, queries, passages, max_length, batch_size)
        if teacher is not None:
            if "t_speed" not in cache:
                cache["t_speed"] = pair_throughput(teacher, queries, passages, max_length, batch_size)
            out["speedup"] = out["sentences_per_s"] / cache["t_speed"]
    return out
