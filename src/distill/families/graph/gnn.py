"""GNN teachers in plain torch: GCN (Kipf & Welling 2017), GraphSAGE with the mean aggregator
(Hamilton et al. 2017) and GAT (Velickovic et al. 2018). Each is called as model(x, ops) with
node features x (N, F) and a `GraphOps` of the same N nodes; it returns logits (N, C).
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from typing_extensions import Annotated

from distill.errors import ConfigError
from distill.families.graph.ops import GraphOps, scatter_sum, segment_softmax
from distill.registry import register_model


class GCNLayer(nn.Module):
    """H' = A_hat H W, A_hat = D^-1/2 (A + I) D^-1/2."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.lin = nn.Linear(d_in, d_out)

    def forward(self, h: Tensor, ops: GraphOps) -> Tensor:  # (N, d_in) -> (N, d_out)
        hw = h @ self.lin.weight.T  # transform first: d_out <= d_in keeps the sparse product small
        return torch.sparse.mm(ops.gcn_adj(), hw) + self.lin.bias


class SAGELayer(nn.Module):
    """aggregator "mean": h_i' = W_self h_i + W_nbr mean_{j in N(i)} h_j;
    aggregator "gcn":  h_i' = W mean_{j in N(i) + {i}} h_j (one weight, the node counted with its neighbours)."""

    def __init__(self, d_in: int, d_out: int, aggregator: str = "mean"):
        super().__init__()
        self.aggregator = aggregator
        self.self_lin = nn.Linear(d_in, d_out)
        self.nbr_lin = nn.Linear(d_in, d_out, bias=False) if aggregator == "mean" else None

    def forward(self, h: Tensor, ops: GraphOps) -> Tensor:
        if self.nbr_lin is None:  # "gcn": transform first (d_out <= d_in keeps the sparse product small)
            return torch.sparse.mm(ops.mean_adj(self_loops=True), h @ self.self_lin.weight.T) + self.self_lin.bias
        # one (N, d_in) x (d_in, 2 d_out) product for both transforms; aggregate after (d_out <= d_in)
        both = h @ torch.cat([self.self_lin.weight, self.nbr_lin.weight]).T  # (N, 2 d_out)
        own, nbr = both.split(self.self_lin.out_features, dim=1)
        return own + self.self_lin.bias + torch.sparse.mm(ops.mean_adj(), nbr)


class GATLayer(nn.Module):
    """Multi-head attention over neighbours and self: e_ij = LeakyReLU(a_l . W h_i + a_r . W h_j),
    alpha = softmax_j(e_ij), h_i' = sum_j alpha_ij W h_j (heads concatenated or averaged)."""

    def __init__(self, d_in: int, d_out: int, heads: int = 1, concat: bool = True, attn_dropout: float = 0.0,
                 negative_slope: float = 0.2):
        super().__init__()
        self.heads, self.d_out, self.concat = heads, d_out, concat
        self.lin = nn.Linear(d_in, heads * d_out, bias=False)
        self.att_dst = nn.Parameter(torch.empty(heads, d_out))
        self.att_src = nn.Parameter(torch.empty(heads, d_out))
        self.bias = nn.Parameter(torch.zeros(heads * d_out if concat else d_out))
        self.attn_dropout, self.negative_slope = attn_dropout, negative_slope
        nn.init.xavier_uniform_(self.att_dst)
        nn.init.xavier_uniform_(self.att_src)

    def attention(self, h: Tensor, ops: GraphOps) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(alpha (E', H), W h (N, H, d), src, dst) over edges with self loops."""
        src, dst = ops.edges_with_self_loops()
        wh = self.lin(h).view(-1, self.heads, self.d_out)                           # (N, H, d)
        score = (wh * self.att_dst).sum(-1)[dst] + (wh * self.att_src).sum(-1)[src]  # (E', H)
        alpha = segment_softmax(F.leaky_relu(score, self.negative_slope), dst, h.shape[0])
        return alpha, wh, src, dst

    def forward(self, h: Tensor, ops: GraphOps) -> Tensor:
        alpha, wh, src, dst = self.attention(h, ops)
        alpha = F.dropout(alpha, self.attn_dropout, self.training)
        out = scatter_sum(alpha.unsqueeze(-1) * wh[src], dst, h.shape[0])  # (N, H, d)
        out = out.flatten(1) if self.concat else out.mean(1)
        return out + self.bias


class GNN(nn.Module):
    """Stacked graph layers with ReLU and dropout between them. With `fan_out` (one entry per layer),
    each layer sees a fresh neighbour sample of at most fan_out[l] neighbours per node while training
    (GraphSAGE's sampling); evaluation always uses every neighbour."""

    def __init__(self, layers: list[nn.Module], dropout: float, input_dropout: float = 0.0,
                 fan_out: list[int] | None = None):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.dropout, self.input_dropout = dropout, input_dropout
        if fan_out is not None and len(fan_out) != len(layers):
            raise ConfigError(f"teacher.model.params.fan_out: {len(fan_out)} entries for {len(layers)} layers; "
                              "give one neighbour count per layer (e.g. [5, 5]) or leave it out.")
        self.fan_out = fan_out

    @property
    def hops(self) -> int:
        """How many edges away a node's output can see (the neighbourhood inference must fetch)."""
        return len(self.layers)

    def forward(self, x: Tensor, ops: GraphOps) -> Tensor:  # (N, F) -> (N, C)
        if self.input_dropout > 0 and self.training:
            h = F.dropout(x.to_dense() if x.is_sparse else x, self.input_dropout, True)
        else:
            h = x  # (N, F), dense or sparse COO
        for i, layer in enumerate(self.layers):
            h = layer(h, ops.sample_neighbors(self.fan_out[i]) if self.fan_out and self.training else ops)
            if i < len(self.layers) - 1:
                h = F.dropout(F.elu(h) if isinstance(layer, GATLayer) else F.relu(h), self.dropout, self.training)
        return h


def _dims(input_shape: tuple[int, ...], num_classes: int, hidden: int, num_layers: int) -> list[tuple[int, int]]:
    sizes = [input_shape[0]] + [hidden] * (num_layers - 1) + [num_classes]
    return list(zip(sizes[:-1], sizes[1:]))


Layers = Annotated[int, Field(ge=1, le=8)]
Prob = Annotated[float, Field(ge=0, lt=1)]


@register_model("gcn", family="graph", description="graph convolutional network, sparse (Kipf & Welling 2017)",
                injected=("input_shape", "num_classes"))
def gcn(input_shape: tuple[int, ...], num_classes: int, hidden: Annotated[int, Field(ge=1)] = 64,
        num_layers: Layers = 2, dropout: Prob = 0.5, input_dropout: Prob = 0.0) -> GNN:
    return GNN([GCNLayer(a, b) for a, b in _dims(input_shape, num_classes, hidden, num_layers)], dropout, input_dropout)


@register_model("sage", family="graph", description="GraphSAGE, mean or gcn aggregator, optional neighbour sampling "
                "in training (Hamilton 2017)", injected=("input_shape", "num_classes"))
def sage(input_shape: tuple[int, ...], num_classes: int, hidden: Annotated[int, Field(ge=1)] = 128,
         num_layers: Layers = 2, dropout: Prob = 0.5, input_dropout: Prob = 0.0,
         aggregator: Literal["mean", "gcn"] = "mean",
         fan_out: Optional[list[Annotated[int, Field(ge=1)]]] = None) -> GNN:
    """`aggregator`: "mean" (separate self and neighbour weights) or "gcn" (one weight over the mean of
    the node and its neighbours). `fan_out`: neighbours sampled per node and layer while training
    (e.g. [5, 5]); None trains on the full neighbourhood."""
    return GNN([SAGELayer(a, b, aggregator) for a, b in _dims(input_shape, num_classes, hidden, num_layers)],
               dropout, input_dropout, fan_out)


@register_model("gat", family="graph", description="graph attention network, multi-head (Velickovic 2018)",
                injected=("input_shape", "num_classes"))
def gat(input_shape: tuple[int, ...], num_classes: int, hidden: Annotated[int, Field(ge=1)] = 8,
        heads: Annotated[int, Field(ge=1)] = 8, num_layers: Layers = 2, dropout: Prob = 0.6,
        attn_dropout: Prob = 0.6, input_dropout: Prob = 0.6) -> GNN:
    layers: list[nn.Module] = []
    d_in = input_shape[0]
    for _ in range(num_layers - 1):
        layers.append(GATLayer(d_in, hidden, heads, concat=True, attn_dropout=attn_dropout))
        d_in = hidden * heads
    layers.append(GATLayer(d_in, num_classes, 1, concat=False, attn_dropout=attn_dropout))
    return GNN(layers, dropout, input_dropout)


def is_gnn(model: nn.Module) -> bool:
    return isinstance(model, GNN)
