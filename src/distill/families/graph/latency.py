"""Inference time per node on CPU, counting what each model must read.

An MLP reads one feature row. A GNN with L layers must fetch the node's L-hop neighbourhood
(CSR look-ups), gather those features, build the operators of the induced subgraph and run on
it; all of that is timed (GLNN, Zhang et al. 2022, compares MLPs with GNNs that fetch
neighbours). Median over nodes (batch size 1) or over batches (per-node time = batch time / batch
size), one CPU thread.

The clock is the calling thread's CPU time (`time.thread_time`): everything here runs in that one
thread (torch is set to one thread), so the figure is what an idle core would take, and other jobs
on a shared machine do not inflate it. `DISTILL_LATENCY_CLOCK=wall` switches to wall-clock time.
"""
from __future__ import annotations

import os
import statistics
import time

import numpy as np
import torch
from torch import Tensor, nn

from distill.families.graph.ops import CSRGraph, GraphOps


def clock() -> float:
    """Seconds of the calling thread's CPU time (or wall time with DISTILL_LATENCY_CLOCK=wall)."""
    return time.perf_counter() if os.environ.get("DISTILL_LATENCY_CLOCK") == "wall" else time.thread_time()


def _median_ms_per_node(predict, nodes: Tensor, batch_size: int, warmup: int) -> float:
    """Median over calls of (time of predict(sorted node ids) / batch size), in ms; the first
    `warmup` calls are not counted (unless there are no others)."""
    groups = [np.sort(nodes[i:i + batch_size].numpy()) for i in range(0, len(nodes) - batch_size + 1, batch_size)]
    if not groups:
        raise ValueError(f"latency: {len(nodes)} nodes do not fill one batch of {batch_size}")
    times = []
    for k, ids in enumerate(groups):
        t0 = clock()
        predict(ids)
        if k >= warmup or len(groups) <= warmup:
            times.append((clock() - t0) / batch_size)
    return 1000.0 * statistics.median(times)


@torch.no_grad()
def gnn_latency_ms(model: nn.Module, x: Tensor, csr: CSRGraph, nodes: Tensor, hops: int, batch_size: int = 1,
                   warmup: int = 3) -> float:
    """Median ms per node to predict `batch_size` nodes at a time with a GNN, neighbourhood fetching
    included: the union of the batch's L-hop neighbourhoods is fetched once."""
    model = model.cpu().eval()

    def predict(ids: np.ndarray) -> Tensor:
        sub = csr.khop(ids, hops)
        ei = torch.from_numpy(csr.subgraph_edges(sub))
        out = model(x[torch.from_numpy(sub)], GraphOps(ei, len(sub), csr.degree(sub)))
        return out[torch.from_numpy(np.searchsorted(sub, ids))]

    return _median_ms_per_node(predict, nodes, batch_size, warmup)


@torch.no_grad()
def mlp_latency_ms(model: nn.Module, x: Tensor, nodes: Tensor, batch_size: int = 1, warmup: int = 3) -> float:
    """Median ms per node to predict `batch_size` nodes at a time from their own features."""
    model = model.cpu().eval()
    return _median_ms_per_node(lambda ids: model(x[torch.from_numpy(ids)]), nodes, batch_size, warmup)


def single_thread(fn, *args, **kw):
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(*args, **kw)
    finally:
        torch.set_num_threads(old)
