"""Graph loading, synthetic graphs and CPF splits."""
import numpy as np
import pytest
import torch

from distill.data.graphs import (assets_dir, contextual_sbm, cora, cpf_split, load_edge_list, load_npz_graph,
                                 to_undirected)
from distill.errors import DistillError
from distill.families.graph.runner import make_problem


def test_to_undirected_symmetric_without_loops_or_duplicates():
    ei = to_undirected(torch.tensor([[0, 1, 1, 2, 2], [1, 0, 2, 2, 0]]), 3)
    pairs = set(map(tuple, ei.T.tolist()))
    assert pairs == {(0, 1), (1, 0), (1, 2), (2, 1), (0, 2), (2, 0)}
    assert ei.shape[1] == len(pairs)


def test_csbm_homophily_and_degree():
    g = contextual_sbm(900, 3, 16, avg_degree=8, homophily=0.9, seed=0)
    src, dst = g.edge_index
    assert 0.85 < float((g.y[src] == g.y[dst]).float().mean()) < 0.95
    assert 6 < g.num_edges / g.num_nodes < 9
    assert g.x.shape == (900, 16) and g.num_classes == 3


@pytest.mark.parametrize("setting", ["transductive", "inductive"])
def test_cpf_split(setting):
    y = torch.arange(300) % 3
    s = cpf_split(y, 20, 30, seed=1, setting=setting, inductive_fraction=0.2)
    for c in range(3):
        assert int((y[s.train] == c).sum()) == 20 and int((y[s.val] == c).sum()) == 30
    parts = [s.train, s.val, s.test, s.test_ind]
    allids = torch.cat(parts)
    assert len(allids) == 300 and len(allids.unique()) == 300
    n_test = len(s.test) + len(s.test_ind)
    assert len(s.test_ind) == (round(0.2 * n_test) if setting == "inductive" else 0)
    assert torch.equal(cpf_split(y, 20, 30, seed=1, setting=setting).train, s.train)
    assert not torch.equal(cpf_split(y, 20, 30, seed=2, setting=setting).train, s.train)
    assert not set(s.observed.tolist()) & set(s.test_ind.tolist())


def test_inductive_problem_hides_held_out_nodes():
    g = contextual_sbm(300, 3, 8, seed=0)
    s = cpf_split(g.y, 20, 30, seed=0, setting="inductive")
    p = make_problem(g, s)
    held = set(s.test_ind.tolist())
    assert not any(int(u) in held or int(v) in held for u, v in p.ctx.ops.edge_index.T)
    assert p.full_ops.edge_index.shape[1] == g.num_edges
    assert set((p.ctx.y >= 0).nonzero().flatten().tolist()) == set(s.train.tolist())


def test_split_refuses_small_classes():
    with pytest.raises(DistillError, match="class 1 has"):
        cpf_split(torch.tensor([0] * 60 + [1] * 10), 20, 30)


def _write_npz(path, adj, attr, labels):
    from scipy.sparse import csr_matrix

    a, x = csr_matrix(adj), csr_matrix(attr)
    np.savez(path, adj_data=a.data, adj_indices=a.indices, adj_indptr=a.indptr, adj_shape=a.shape,
             attr_data=x.data, attr_indices=x.indices, attr_indptr=x.indptr, attr_shape=x.shape, labels=labels)


def test_npz_and_edge_list_loaders_agree(tmp_path):
    adj = np.zeros((5, 5), np.float32)
    for u, v in [(0, 1), (1, 2), (3, 4)]:
        adj[u, v] = 1
    attr = np.eye(5, 3, dtype=np.float32) * 2
    labels = np.array([0, 1, 0, 1, 1])
    _write_npz(tmp_path / "g.npz", adj, attr, labels)
    g = load_npz_graph(tmp_path / "g.npz", largest_cc=False, normalize_features=False)
    assert g.num_nodes == 5 and g.num_edges == 6 and torch.equal(g.y, torch.tensor(labels))
    assert torch.equal(g.x, torch.from_numpy(attr))
    lcc = load_npz_graph(tmp_path / "g.npz", largest_cc=True)
    assert lcc.num_nodes == 3 and torch.allclose(lcc.x.sum(1), torch.ones(3))
    np.savetxt(tmp_path / "e.txt", np.array([[0, 1], [1, 2], [3, 4]]), fmt="%d")
    np.savetxt(tmp_path / "x.txt", attr)
    np.savetxt(tmp_path / "y.txt", labels, fmt="%d")
    h = load_edge_list(tmp_path / "e.txt", tmp_path / "x.txt", tmp_path / "y.txt")
    assert torch.equal(h.edge_index, g.edge_index) and torch.equal(h.y, g.y)


def test_npz_loader_refuses_pickled_arrays(tmp_path):
    np.savez(tmp_path / "bad.npz", adj_data=np.array([object()], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        load_npz_graph(tmp_path / "bad.npz")


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DistillError, match="not found"):
        load_npz_graph(tmp_path / "nope.npz")


cora_path = assets_dir() / "graphs" / "cora.npz"


@pytest.mark.skipif(not cora_path.is_file(), reason="cora.npz not in DISTILL_ASSETS")
def test_cora_as_in_cpf():
    g = cora()
    assert (g.num_nodes, g.x.shape[1], g.num_classes) == (2485, 1433, 7)
    assert torch.allclose(g.x.sum(1), torch.ones(g.num_nodes), atol=1e-5)
    assert cora(largest_cc=False).num_nodes == 2708
    s = cpf_split(g.y, seed=0)
    assert (len(s.train), len(s.val), len(s.test)) == (140, 210, 2135)
