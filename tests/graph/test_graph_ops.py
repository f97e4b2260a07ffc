"""Sparse GNN operators and layers against dense references on tiny graphs."""
import numpy as np
import pytest
import torch

from distill.data.graphs import contextual_sbm, to_undirected
from distill.families.graph.gnn import GATLayer, GCNLayer, SAGELayer, gat, gcn, sage
from distill.families.graph.ops import CSRGraph, GraphOps, segment_softmax


def tiny_graph(n=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    ei = torch.randint(n, (2, 12), generator=g)
    ei = to_undirected(ei, n)
    a = torch.zeros(n, n)
    a[ei[1], ei[0]] = 1.0
    return ei, a


def test_gcn_propagation_equals_dense_reference():
    ei, a = tiny_graph()
    n = a.shape[0]
    a_hat = a + torch.eye(n)
    d = a_hat.sum(1).rsqrt()
    ref = d[:, None] * a_hat * d[None, :]
    ops = GraphOps(ei, n)
    assert torch.allclose(ops.gcn_adj().to_dense(), ref, atol=1e-6)
    torch.manual_seed(0)
    layer, h = GCNLayer(5, 3), torch.randn(n, 5)
    assert torch.allclose(layer(h, ops), ref @ (h @ layer.lin.weight.T) + layer.lin.bias, atol=1e-5)


def test_sage_mean_aggregation_equals_dense_reference():
    ei, a = tiny_graph(seed=1)
    n = a.shape[0]
    mean = a / a.sum(1, keepdim=True).clamp(min=1)
    torch.manual_seed(0)
    layer, h = SAGELayer(5, 3), torch.randn(n, 5)
    ref = layer.self_lin(h) + mean @ layer.nbr_lin(h)
    assert torch.allclose(layer(h, GraphOps(ei, n)), ref, atol=1e-5)


def test_sage_gcn_aggregator_equals_dense_reference():
    ei, a = tiny_graph(seed=4)
    n = a.shape[0]
    a_hat = a + torch.eye(n)
    mean = a_hat / a_hat.sum(1, keepdim=True)  # the node and its neighbours, averaged
    torch.manual_seed(0)
    layer, h = SAGELayer(5, 3, aggregator="gcn"), torch.randn(n, 5)
    assert layer.nbr_lin is None
    assert torch.allclose(layer(h, GraphOps(ei, n)), layer.self_lin(mean @ h), atol=1e-5)


def test_neighbour_sampling_keeps_at_most_k_real_edges_per_node():
    g = contextual_sbm(200, 3, 4, avg_degree=12, seed=0)
    ops = GraphOps(g.edge_index, g.num_nodes)
    full = {tuple(e) for e in g.edge_index.T.tolist()}
    deg = ops.degree()
    for k in (1, 3, 5):
        s = ops.sample_neighbors(k, torch.Generator().manual_seed(k))
        kept = torch.bincount(s.edge_index[1], minlength=g.num_nodes)
        assert torch.equal(kept, deg.clamp(max=k).long())           # min(degree, k) for every node
        assert {tuple(e) for e in s.edge_index.T.tolist()} <= full  # only edges of the graph
        assert len(set(map(tuple, s.edge_index.T.tolist()))) == s.edge_index.shape[1]  # no edge twice
        # the sampled operator still averages: every row (node + kept neighbours) sums to 1
        rows = s.mean_adj(self_loops=True).to_dense().sum(1)
        assert torch.allclose(rows, torch.ones(g.num_nodes), atol=1e-5)
    a = ops.sample_neighbors(3, torch.Generator().manual_seed(0)).edge_index
    b = ops.sample_neighbors(3, torch.Generator().manual_seed(1)).edge_index
    assert not torch.equal(a, b)                                     # a fresh draw each time


def test_sage_samples_neighbours_only_while_training():
    g = contextual_sbm(120, 3, 8, avg_degree=10, seed=2)
    ops = GraphOps(g.edge_index, g.num_nodes)
    torch.manual_seed(0)
    model = sage((8,), 3, dropout=0.0, aggregator="gcn", fan_out=[2, 2])
    model.eval()
    assert torch.equal(model(g.x, ops), model(g.x, ops))            # full neighbourhood: deterministic
    model.train()
    torch.manual_seed(1)
    a = model(g.x, ops)
    torch.manual_seed(2)
    assert not torch.allclose(a, model(g.x, ops))                   # a new sample per call
    with pytest.raises(Exception, match="fan_out"):
        sage((8,), 3, num_layers=2, fan_out=[5])


def test_gat_attention_equals_dense_masked_softmax():
    ei, a = tiny_graph(seed=2)
    n = a.shape[0]
    torch.manual_seed(0)
    layer, h = GATLayer(5, 4, heads=2), torch.randn(n, 5)
    wh = layer.lin(h).view(n, 2, 4)
    e = (wh * layer.att_dst).sum(-1)[:, None, :] + (wh * layer.att_src).sum(-1)[None, :, :]  # (i, j, H)
    e = torch.nn.functional.leaky_relu(e, 0.2).masked_fill(((a + torch.eye(n)) == 0)[..., None], float("-inf"))
    alpha = e.softmax(1)                                                                     # over j
    ref = torch.einsum("ijh,jhd->ihd", alpha, wh).flatten(1) + layer.bias
    assert torch.allclose(layer(h, GraphOps(ei, n)), ref, atol=1e-5)


def test_segment_softmax_sums_to_one_per_segment():
    scores = torch.randn(10, 3) * 50
    index = torch.tensor([0, 0, 1, 2, 2, 2, 4, 4, 4, 4])
    w = segment_softmax(scores, index, 5)
    sums = torch.zeros(5, 3).index_add_(0, index, w)
    assert torch.allclose(sums[[0, 1, 2, 4]], torch.ones(4, 3), atol=1e-6)
    assert torch.isfinite(w).all()


@pytest.mark.parametrize("builder", [gcn, sage, gat])
def test_gnn_forward_backward_and_sparse_input(builder):
    g = contextual_sbm(60, 3, 8, seed=0)
    ops = GraphOps(g.edge_index, g.num_nodes)
    torch.manual_seed(0)
    model = builder((8,), 3).eval()
    out = model(g.x, ops)
    assert out.shape == (60, 3)
    assert torch.allclose(model(g.x.to_sparse(), ops), out, atol=1e-5)
    model.train()
    model(g.x, ops).logsumexp(-1).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def sage_gcn(*a, **k):
    return sage(*a, aggregator="gcn", fan_out=[3, 3], **k)


@pytest.mark.parametrize("builder", [gcn, sage, sage_gcn, gat])
def test_gnn_on_khop_subgraph_matches_full_graph(builder):
    """What the latency measurement runs (fetch the L-hop neighbourhood, run on it) gives the
    same prediction as the full graph: the fetch is complete."""
    g = contextual_sbm(80, 3, 8, avg_degree=4, seed=1)
    torch.manual_seed(0)
    model = builder((8,), 3).eval()
    full = model(g.x, GraphOps(g.edge_index, g.num_nodes))
    csr = CSRGraph(g.edge_index, g.num_nodes)
    for v in [0, 17, 42]:
        sub = csr.khop(np.array([v]), model.hops)
        ei = torch.from_numpy(csr.subgraph_edges(sub))
        out = model(g.x[torch.from_numpy(sub)], GraphOps(ei, len(sub), csr.degree(sub)))
        assert torch.allclose(out[int(np.searchsorted(sub, v))], full[v], atol=1e-5)


def test_khop_equals_dense_reachability():
    ei, a = tiny_graph(n=9, seed=3)
    csr = CSRGraph(ei, 9)
    reach = ((torch.eye(9) + a) @ (torch.eye(9) + a))[4] > 0
    assert csr.khop(np.array([4]), 2).tolist() == reach.nonzero().flatten().tolist()


def test_latency_per_node_one_at_a_time_and_batched():
    from distill.families.graph.latency import gnn_latency_ms, mlp_latency_ms
    from distill.models.mlp import mlp

    g = contextual_sbm(100, 3, 8, avg_degree=4, seed=3)
    csr = CSRGraph(g.edge_index, g.num_nodes)
    gnn, student = sage((8,), 3, aggregator="gcn"), mlp((8,), 3, hidden=[8])
    nodes = torch.arange(0, 40)
    for b in (1, 8):
        assert gnn_latency_ms(gnn, g.x, csr, nodes, 2, b) > 0
        assert mlp_latency_ms(student, g.x, nodes, b) > 0
    with pytest.raises(ValueError, match="one batch of 64"):
        mlp_latency_ms(student, g.x, nodes, 64)
