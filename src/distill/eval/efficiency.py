"""Size and speed of a model: parameters, bytes on disk, CPU latency per sample."""
from __future__ import annotations

import copy
import statistics
import time
from pathlib import Path

import torch
from torch import nn


def size_on_disk(path: str | Path) -> int:
    """Bytes of a file, or of all files under a folder."""
    p = Path(path)
    return p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


@torch.no_grad()
def cpu_latency_ms(model: nn.Module, example: torch.Tensor, runs: int = 200, warmup: int = 20,
                   threads: int | None = 1) -> float:
    """Median wall time (ms) of one forward pass at batch size 1 on CPU, single-threaded by default."""
    m = copy.deepcopy(model).cpu().eval()
    x = example[:1].cpu()
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        for _ in range(warmup):
            m(x)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            m(x)
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old)
    return 1000.0 * statistics.median(times)
