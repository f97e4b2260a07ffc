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


@torch.no_grad()
def gnn_latency_ms(model: nn.Module, x: Tensor, csr: CSRGraph, nodes: Tensor, hops: int, warmup: int = 3) -> float:
    """Median ms to predict one node with a GNN, neighbourhood fetching included."""
    model = model.cpu().eval()
    times = []
    for k, v in enumerate(nodes.tolist()):
        t0 = clock()
        sub = csr.khop(np.array([v]), hops)
        ei = torch.from_numpy(csr.subgraph_edges(sub))
        out = model(x[torch.from_numpy(sub)], GraphOps(ei, len(sub), csr.degree(sub)))
        _ = out[int(np.searchsorted(sub, v))]
        if k >= warmup or len(nodes) <= warmup:
            times.append(clock() - t0)
    return 1000.0 * statistics.median(times)


@torch.no_grad()
def gnn_batch_latency_ms(model: nn.Module, x: Tensor, csr: CSRGraph, nodes: Tensor, hops: int, batch_size: int,
                         warmup: int = 1) -> float:
    """Median per-node ms when `batch_size` nodes are predicted together: the union of their L-hop
    neighbourhoods is fetched once (shared neighbours are read once)."""
    model = model.cpu().eval()
    times = []
    for k, start in enumerate(range(0, len(nodes) - batch_size + 1, batch_size)):
        batch = np.sort(nodes[start:start + batch_size].numpy())
        t0 = clock()
        sub = csr.khop(batch, hops)
        ei = torch.from_numpy(csr.subgraph_edges(sub))
        out = model(x[torch.from_numpy(sub)], GraphOps(ei, len(sub), csr.degree(sub)))
        _ = out[torch.from_numpy(np.searchsorted(sub, batch))]
        if k >= warmup:
            times.append((clock() - t0) / batch_size)
    if not times:
        raise ValueError(f"gnn_batch_latency_ms: {len(nodes)} nodes give fewer than {warmup + 1} batches of {batch_size}")
    return 1000.0 * statistics.median(times)


@torch.no_grad()
def mlp_batch_latency_ms(model: nn.Module, x: Tensor, nodes: Tensor, batch_size: int, warmup: int = 1) -> float:
    """Median per-node ms when `batch_size` nodes are predicted together from their own features."""
    model = model.cpu().eval()
    times = []
    for k, start in enumerate(range(0, len(nodes) - batch_size + 1, batch_size)):
        idx = nodes[start:start + batch_size]
        t0 = clock()
        _ = model(x[idx])
        if k >= warmup:
            times.append((clock() - t0) / batch_size)
    if not times:
        raise ValueError(f"mlp_batch_latency_ms: {len(nodes)} nodes give fewer than {warmup + 1} batches of {batch_size}")
    return 1000.0 * statistics.median(times)


@torch.no_grad()
def mlp_latency_ms(model: nn.Module, x: Tensor, nodes: Tensor, warmup: int = 3) -> float:
    """Median ms to predict one node from its own features."""
    model = model.cpu().eval()
    times = []
    for k, v in enumerate(nodes.tolist()):
        t0 = clock()
        _ = model(x[v:v + 1])
        if k >= warmup or len(nodes) <= warmup:
            times.append(clock() - t0)
    return 1000.0 * statistics.median(times)


def single_thread(fn, *args, **kw):
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(*args, **kw)
    finally:
        torch.set_num_threads(old)
