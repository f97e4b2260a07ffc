"""A served teacher as the source of token_kd's targets (`teacher.url` in a recipe).

The student's batches are sent to `distill serve-teacher` one example per row (so packed rows
keep their isolation), and the teacher's top-k log-probs and exact tail mass come back for the
counted positions, in the same layout as the offline cache (`cache.py`): token_kd uses either.
"""
from __future__ import annotations

import torch
from torch import Tensor

from distill.families.llm.data import IGNORE
from distill.serve import RemoteTeacher


class ServedTargets:
    """`lookup(batch)` -> (indices (n, k), log-probs (n, k), log tail (n,)) from a served teacher."""

    def __init__(self, url: str, k: int, temperature: float, pad_id: int = 0, timeout: float = 120.0):
        self.remote = RemoteTeacher(url, timeout=timeout)
        self.k, self.temperature, self.pad_id = k, temperature, pad_id
        self.meta = {"vocab_size": int(self.remote.info["vocab_size"]), "fingerprint": self.remote.fingerprint()}

    def lookup(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        ids, labels, seg = batch["input_ids"].cpu(), batch["labels"].cpu(), batch["seg"].cpu()
        pieces: list[tuple[list[int], Tensor]] = []  # (tokens of one example, its counted local positions)
        for b in range(ids.shape[0]):
            for j in sorted(seg[b].unique().tolist()):
                if j == 0:
                    continue
                pos = (seg[b] == j).nonzero().squeeze(-1)
                counted = (labels[b, pos] != IGNORE).nonzero().squeeze(-1)
                if counted.numel():
                    pieces.append((ids[b, pos].tolist(), counted))
        if not pieces:
            k = self.k
            return torch.zeros(0, k, dtype=torch.long), torch.zeros(0, k), torch.zeros(0)
        width = max(len(t) for t, _ in pieces)
        rows = torch.full((len(pieces), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(rows)
        for r, (t, _) in enumerate(pieces):
            rows[r, :len(t)] = torch.tensor(t)
            mask[r, :len(t)] = 1
        out, tail = self.remote.topk(rows, mask, k=self.k, temperature=self.temperature, with_tail=True)
        idx = torch.cat([out.indices[r, c] for r, (_, c) in enumerate(pieces)])
        lp = torch.cat([out.logprobs[r, c] for r, (_, c) in enumerate(pieces)])
        lt = torch.cat([tail[r, c] for r, (_, c) in enumerate(pieces)])
        return idx, lp, lt
