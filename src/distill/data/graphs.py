"""Node-classification graphs: Cora, any graph in the same npz layout or as an edge list, and a
synthetic contextual stochastic block model; CPF splits (Yang et al. 2021) in the transductive
and inductive settings of GLNN (Zhang et al. 2022, "Graph-less Neural Networks", sec. 5).

A `Graph` holds node features x (N, F) float, labels y (N,) long, and an undirected edge_index
(2, E) long with both directions and no self loops. A `GraphSplit` holds node ids:
train (labelled), val, test, and `test_ind` (the inductive test nodes, cut out of the graph the
learners see; empty in the transductive setting).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor
from typing_extensions import Annotated

from distill.errors import DistillError
from distill.registry import register_dataset
from distill.utils import assets_dir


@dataclass
class Graph:
    name: str
    x: Tensor            # (N, F) float32
    y: Tensor            # (N,) long
    edge_index: Tensor   # (2, E) long, symmetric, no self loops
    num_classes: int
    class_names: list[str] = field(default_factory=list)

    @property
    def num_nodes(self) -> int:
        return int(self.x.shape[0])

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[1])

    def subgraph(self, nodes: Tensor) -> tuple[Graph, Tensor]:
        """The graph induced on `nodes` (sorted ids), and the map old id -> new id (-1 if dropped)."""
        nodes = nodes.sort().values
        remap = torch.full((self.num_nodes,), -1, dtype=torch.long)
        remap[nodes] = torch.arange(len(nodes))
        src, dst = remap[self.edge_index[0]], remap[self.edge_index[1]]
        keep = (src >= 0) & (dst >= 0)
        g = Graph(self.name, self.x[nodes], self.y[nodes], torch.stack([src[keep], dst[keep]]),
                  self.num_classes, self.class_names)
        return g, remap


@dataclass
class GraphSplit:
    train: Tensor
    val: Tensor
    test: Tensor                      # transductive test nodes (in the observed graph)
    test_ind: Tensor                  # inductive test nodes (held out of the observed graph)
    setting: str = "transductive"

    @property
    def observed(self) -> Tensor:
        """Nodes of the graph seen during training (all but the inductive test nodes)."""
        return torch.cat([self.train, self.val, self.test]).sort().values


# ------------------------------------------------------------------ graph building


def to_undirected(edge_index: Tensor, num_nodes: int) -> Tensor:
    """Symmetrise, drop self loops and duplicate edges. (2, E) -> (2, E') sorted by (src, dst)."""
    ei = torch.cat([edge_index, edge_index.flip(0)], 1)
    ei = ei[:, ei[0] != ei[1]]
    key = torch.unique(ei[0] * num_nodes + ei[1])
    return torch.stack([key // num_nodes, key % num_nodes])


def largest_component(edge_index: Tensor, num_nodes: int) -> Tensor:
    """Node ids (sorted) of the largest connected component."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    a = coo_matrix((np.ones(edge_index.shape[1]), edge_index.numpy()), shape=(num_nodes, num_nodes))
    _, comp = connected_components(a, directed=False)
    biggest = np.bincount(comp).argmax()
    return torch.from_numpy(np.flatnonzero(comp == biggest)).long()


def _finish(name: str, x: Tensor, y: Tensor, edge_index: Tensor, *, largest_cc: bool, normalize_features: bool,
            class_names: list[str] | None = None) -> Graph:
    n = x.shape[0]
    g = Graph(name, x.float(), y.long(), to_undirected(edge_index.long(), n), int(y.max()) + 1,
              class_names or [])
    if largest_cc:
        g, _ = g.subgraph(largest_component(g.edge_index, n))
    if normalize_features:  # rows sum to 1 (bag-of-words counts -> frequencies)
        g.x = g.x / g.x.sum(1, keepdim=True).clamp(min=1e-12)
    g.class_names = g.class_names or [str(i) for i in range(g.num_classes)]
    return g


def _csr(d, prefix: str) -> Tensor:
    from scipy.sparse import csr_matrix

    return csr_matrix((d[f"{prefix}_data"], d[f"{prefix}_indices"], d[f"{prefix}_indptr"]),
                      shape=tuple(d[f"{prefix}_shape"]))


def load_npz_graph(path: str | os.PathLike, *, name: str | None = None, largest_cc: bool = True,
                   normalize_features: bool = True) -> Graph:
    """A graph stored as CSR arrays `adj_{data,indices,indptr,shape}`, `attr_*` (or a dense
    `attr_matrix`) and `labels`. Read with np.load(allow_pickle=False): no code runs from the file."""
    path = Path(path)
    if not path.is_file():
        raise DistillError(f"graph file {str(path)!r} not found (set DISTILL_ASSETS or data.params.path).")
    with np.load(path, allow_pickle=False) as d:
        adj = _csr(d, "adj").tocoo()
        if "attr_data" in d.files:
            x = torch.from_numpy(_csr(d, "attr").toarray())
        elif "attr_matrix" in d.files:
            x = torch.from_numpy(np.asarray(d["attr_matrix"]))
        else:
            raise DistillError(f"{path}: no node features (expected attr_* CSR arrays or attr_matrix).")
        y = torch.from_numpy(np.asarray(d["labels"]).astype(np.int64))
        names = [str(c) for c in d["class_names"]] if "class_names" in d.files else None
    ei = torch.from_numpy(np.stack([adj.row, adj.col]).astype(np.int64))
    return _finish(name or path.stem, x, y, ei, largest_cc=largest_cc, normalize_features=normalize_features,
                   class_names=names)


def load_edge_list(edges: str | os.PathLike, features: str | os.PathLike, labels: str | os.PathLike, *,
                   name: str = "graph", largest_cc: bool = False, normalize_features: bool = False) -> Graph:
    """A graph from text files: `edges` has one "src dst" pair per line (0-based ids), `features`
    one row of floats per node, `labels` one integer per node (`.npy` files are read too)."""
    def read(p, dtype):
        p = Path(p)
        if not p.is_file():
            raise DistillError(f"graph file {str(p)!r} not found.")
        return np.load(p, allow_pickle=False) if p.suffix == ".npy" else np.loadtxt(p, dtype=dtype, ndmin=2)

    e = read(edges, np.int64).reshape(-1, 2)
    x = read(features, np.float32)
    y = read(labels, np.int64).reshape(-1)
    if x.shape[0] != y.shape[0] or (e.size and e.max() >= x.shape[0]):
        raise DistillError(f"{name}: {x.shape[0]} feature rows, {y.shape[0]} labels, largest node id "
                           f"{int(e.max()) if e.size else -1}: they must agree.")
    return _finish(name, torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(e.T.copy()),
                   largest_cc=largest_cc, normalize_features=normalize_features)


def contextual_sbm(num_nodes: int = 600, num_classes: int = 3, num_features: int = 32, avg_degree: float = 8.0,
                   homophily: float = 0.9, feature_signal: float = 0.6, seed: int = 0) -> Graph:
    """Contextual stochastic block model (Deshpande et al. 2018): a node's class sets both its edges
    (a share `homophily` of them inside the class) and its features (class mean * signal + N(0, 1))."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(num_nodes) % num_classes
    y = y[torch.randperm(num_nodes, generator=g)]
    m = int(num_nodes * avg_degree / 2)
    src = torch.randint(num_nodes, (m,), generator=g)
    same = torch.rand(m, generator=g) < homophily
    # partner: a random node of the same class (if `same`) or of another class
    by_class = [(y == c).nonzero().flatten() for c in range(num_classes)]
    shift = torch.randint(1, num_classes, (m,), generator=g)
    target_class = torch.where(same, y[src], (y[src] + shift) % num_classes)
    dst = torch.empty(m, dtype=torch.long)
    for c in range(num_classes):
        sel = target_class == c
        dst[sel] = by_class[c][torch.randint(len(by_class[c]), (int(sel.sum()),), generator=g)]
    means = torch.randn(num_classes, num_features, generator=g)
    x = feature_signal * means[y] + torch.randn(num_nodes, num_features, generator=g)
    return _finish("csbm", x, y, torch.stack([src, dst]), largest_cc=False, normalize_features=False)


# ------------------------------------------------------------------ splits


def cpf_split(y: Tensor, train_per_class: int = 20, val_per_class: int = 30, seed: int = 0, *,
              setting: Literal["transductive", "inductive"] = "transductive",
              inductive_fraction: float = 0.2) -> GraphSplit:
    """CPF split: `train_per_class` labelled and `val_per_class` validation nodes per class, the
    rest test. Inductive: `inductive_fraction` of the test nodes are held out of the graph."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in range(int(y.max()) + 1):
        where = (y == c).nonzero().flatten().numpy()
        if len(where) < train_per_class + val_per_class:
            raise DistillError(f"class {c} has {len(where)} nodes; the split needs "
                               f"{train_per_class} + {val_per_class} per class.")
        where = rng.permutation(where)
        train.append(where[:train_per_class])
        val.append(where[train_per_class:train_per_class + val_per_class])
    train_t = torch.from_numpy(np.sort(np.concatenate(train)))
    val_t = torch.from_numpy(np.sort(np.concatenate(val)))
    rest = torch.ones(len(y), dtype=torch.bool)
    rest[train_t] = rest[val_t] = False
    test = rest.nonzero().flatten()
    test_ind = test[:0]
    if setting == "inductive":
        perm = torch.from_numpy(rng.permutation(len(test)))
        n_ind = int(round(inductive_fraction * len(test)))
        test_ind, test = test[perm[:n_ind]].sort().values, test[perm[n_ind:]].sort().values
    return GraphSplit(train_t.long(), val_t.long(), test.long(), test_ind.long(), setting)


# ------------------------------------------------------------------ registered data sets


@register_dataset("cora", family="graph", description="Cora citations: 2708 papers (2485 in the largest component), "
                  "1433 word features, 7 classes; from $DISTILL_ASSETS/graphs/cora.npz")
def cora(path: str | None = None, largest_cc: bool = True, normalize_features: bool = True) -> Graph:
    """Cora as in CPF/GLNN: largest connected component, row-normalised bag-of-words features."""
    return load_npz_graph(path or assets_dir() / "graphs" / "cora.npz", name="cora", largest_cc=largest_cc,
                          normalize_features=normalize_features)


@register_dataset("graph_npz", family="graph", description="any graph in Cora's npz layout (CSR adj_*, attr_*, labels)")
def graph_npz(path: str, largest_cc: bool = True, normalize_features: bool = True) -> Graph:
    return load_npz_graph(path, largest_cc=largest_cc, normalize_features=normalize_features)


@register_dataset("edge_list", family="graph", description="a graph from an edge list + feature matrix + labels (text or .npy)")
def edge_list(edges: str, features: str, labels: str, largest_cc: bool = False,
              normalize_features: bool = False) -> Graph:
    return load_edge_list(edges, features, labels, name=Path(edges).stem, largest_cc=largest_cc,
                          normalize_features=normalize_features)


@register_dataset("csbm", family="graph", description="synthetic contextual stochastic block model (for tests and demos)")
def csbm(num_nodes: Annotated[int, Field(ge=10)] = 600, num_classes: Annotated[int, Field(ge=2)] = 3,
         num_features: Annotated[int, Field(ge=1)] = 32, avg_degree: Annotated[float, Field(gt=0)] = 8.0,
         homophily: Annotated[float, Field(ge=0, le=1)] = 0.9, feature_signal: Annotated[float, Field(ge=0)] = 0.6,
         seed: int = 0) -> Graph:
    return contextual_sbm(num_nodes, num_classes, num_features, avg_degree, homophily, feature_signal, seed)
