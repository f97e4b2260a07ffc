"""Sparse graph operators in plain torch (no graph library needed).

`GraphOps` wraps an undirected edge_index (2, E) of N nodes and caches the operators the GNNs use:
- `gcn_adj`:  D^-1/2 (A + I) D^-1/2 (Kipf & Welling 2017, eq. 2), a sparse (N, N) tensor;
- `mean_adj`: D^-1 A, row-normalised (GraphSAGE's mean aggregator, Hamilton et al. 2017); with
  `self_loops=True`, (D + I)^-1 (A + I) (GraphSAGE's "gcn" aggregator: the mean over the node and its
  neighbours);
- `sample_neighbors(k)`: the operators of a random subgraph where every node keeps at most k of its
  incoming edges (GraphSAGE's neighbour sampling, drawn anew at every call);
- `edges_with_self_loops`: (src, dst) index vectors for message passing (GAT).
Messages flow src -> dst; row i of an operator gathers node i's neighbours.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def sparse_matrix(row: Tensor, col: Tensor, value: Tensor, n: int) -> Tensor:
    """A coalesced sparse COO (n, n) tensor (sparse @ dense has a backward w.r.t. the dense side)."""
    return torch.sparse_coo_tensor(torch.stack([row, col]), value, (n, n), check_invariants=False).coalesce()


def scatter_sum(src: Tensor, index: Tensor, n: int) -> Tensor:
    """out[i] = sum of src[e] over e with index[e] == i. src (E, ...) -> (n, ...)."""
    out = src.new_zeros((n, *src.shape[1:]))
    return out.index_add_(0, index, src)


def segment_softmax(scores: Tensor, index: Tensor, n: int) -> Tensor:
    """Softmax of scores (E, H) among the entries that share index[e] (E,); stable (max subtracted)."""
    idx = index.view(-1, *([1] * (scores.dim() - 1))).expand_as(scores)
    peak = scores.new_full((n, *scores.shape[1:]), float("-inf")).scatter_reduce(0, idx, scores, "amax",
                                                                               include_self=True)
    w = (scores - peak[index]).exp()
    return w / scatter_sum(w, index, n)[index].clamp(min=1e-16)


class GraphOps:
    """Cached propagation operators of one graph, on one device."""

    def __init__(self, edge_index: Tensor, num_nodes: int, degree: Tensor | None = None):
        self.edge_index = edge_index.long()
        self.num_nodes = int(num_nodes)
        # degrees in the whole graph, when this is a fetched neighbourhood whose border nodes
        # miss some of their edges (GCN's normalisation needs the true degree)
        self._degree = degree
        self._cache: dict[str, object] = {}

    def to(self, device) -> GraphOps:
        out = GraphOps(self.edge_index.to(device), self.num_nodes,
                       None if self._degree is None else self._degree.to(device))
        out._cache = {k: (v.to(device) if isinstance(v, Tensor) else tuple(t.to(device) for t in v))  # type: ignore[union-attr]
                      for k, v in self._cache.items()}
        return out

    @property
    def device(self) -> torch.device:
        return self.edge_index.device

    def degree(self) -> Tensor:
        """In-degree of each node (= out-degree on an undirected graph), without self loops. (N,)"""
        if self._degree is not None:
            return self._degree.float()
        return torch.bincount(self.edge_index[1], minlength=self.num_nodes).float()

    def gcn_adj(self) -> Tensor:
        if "gcn" not in self._cache:
            n = self.num_nodes
            loops = torch.arange(n, device=self.device)
            dst = torch.cat([self.edge_index[1], loops])
            src = torch.cat([self.edge_index[0], loops])
            deg = self.degree() + 1.0
            inv = deg.rsqrt()
            self._cache["gcn"] = sparse_matrix(dst, src, inv[dst] * inv[src], n)
        return self._cache["gcn"]  # type: ignore[return-value]

    def mean_adj(self, self_loops: bool = False) -> Tensor:
        key = "mean_loops" if self_loops else "mean"
        if key not in self._cache:
            src, dst = self.edge_index
            if self_loops:
                loops = torch.arange(self.num_nodes, device=self.device)
                src, dst = torch.cat([src, loops]), torch.cat([dst, loops])
                deg = self.degree() + 1.0
            else:
                deg = self.degree().clamp(min=1.0)
            self._cache[key] = sparse_matrix(dst, src, 1.0 / deg[dst], self.num_nodes)
        return self._cache[key]  # type: ignore[return-value]

    def sample_neighbors(self, k: int, generator: torch.Generator | None = None) -> GraphOps:
        """Operators of a random subgraph in which every node keeps at most `k` of its incoming edges,
        drawn uniformly without replacement (all of them when it has at most k)."""
        src, dst = self.edge_index
        # sort edges by destination, in random order within each destination, then keep the first k
        key = dst.double() + torch.rand(dst.shape[0], generator=generator, dtype=torch.float64).to(dst.device)
        order = torch.argsort(key)
        counts = torch.bincount(dst, minlength=self.num_nodes)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(order.shape[0], device=dst.device) - starts[dst[order]]
        return GraphOps(self.edge_index[:, order[rank < k]], self.num_nodes)

    def edges_with_self_loops(self) -> tuple[Tensor, Tensor]:
        if "loops" not in self._cache:
            loops = torch.arange(self.num_nodes, device=self.device)
            self._cache["loops"] = (torch.cat([self.edge_index[0], loops]), torch.cat([self.edge_index[1], loops]))
        return self._cache["loops"]  # type: ignore[return-value]


class CSRGraph:
    """Neighbour lists in CSR form (numpy) for fetching k-hop neighbourhoods node by node."""

    def __init__(self, edge_index: Tensor, num_nodes: int):
        src, dst = edge_index.cpu().numpy()
        order = np.lexsort((dst, src))
        self.indices = dst[order]
        self.indptr = np.zeros(num_nodes + 1, dtype=np.int64)
        np.cumsum(np.bincount(src, minlength=num_nodes), out=self.indptr[1:])

    def khop(self, nodes: np.ndarray, hops: int) -> np.ndarray:
        """Sorted ids of `nodes` and every node within `hops` edges of them."""
        seen = frontier = np.unique(nodes)
        for _ in range(hops):
            nbrs = [self.indices[self.indptr[i]:self.indptr[i + 1]] for i in frontier]
            frontier = np.setdiff1d(np.concatenate(nbrs) if nbrs else frontier[:0], seen)
            seen = np.union1d(seen, frontier)
        return seen

    def degree(self, nodes: np.ndarray) -> Tensor:
        return torch.from_numpy(self.indptr[nodes + 1] - self.indptr[nodes])

    def subgraph_edges(self, nodes: np.ndarray) -> np.ndarray:
        """Edges (2, E) among sorted `nodes`, renumbered 0..len(nodes)-1."""
        counts = self.indptr[nodes + 1] - self.indptr[nodes]
        src = np.repeat(np.arange(len(nodes)), counts)
        dst = np.concatenate([self.indices[self.indptr[i]:self.indptr[i + 1]] for i in nodes]) if len(nodes) else src
        pos = np.searchsorted(nodes, dst).clip(max=len(nodes) - 1)
        keep = nodes[pos] == dst
        return np.stack([src[keep], pos[keep]])
