"""Graph methods: their losses are the shared divergences; every method trains."""
import pytest
import torch
import torch.nn.functional as F

from distill.data.graphs import contextual_sbm, cpf_split
from distill.families.graph.base import NodeContext, masked_cross_entropy
from distill.families.graph.ffg2m import FFG2M
from distill.families.graph.glnn import GLNN
from distill.families.graph.gnn import gcn
from distill.families.graph.ops import GraphOps
from distill.families.graph.runner import make_problem
from distill.losses import divergence
from distill.models.mlp import mlp
from distill.registry import methods, models
from distill.teacher import Teacher


@pytest.fixture(scope="module")
def setup():
    g = contextual_sbm(90, 3, 6, avg_degree=4, seed=0)
    prob = make_problem(g, cpf_split(g.y, 5, 5, seed=0))
    torch.manual_seed(0)
    teacher = Teacher(gcn((6,), 3))
    return g, prob, teacher


def test_masked_ce_without_labels_is_zero():
    z = torch.randn(4, 3, requires_grad=True)
    loss = masked_cross_entropy(z, torch.full((4,), -1))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(z.grad).all()


@pytest.mark.parametrize("T", [1.0, 2.0])
def test_glnn_kd_term_is_the_shared_kl(setup, T):
    g, prob, teacher = setup
    torch.manual_seed(0)
    m = GLNN(mlp((6,), 3, hidden=[8]), teacher, lam=0.3, temperature=T)
    m.attach(prob.ctx)
    idx = prob.ctx.nodes
    terms = m({"idx": idx})
    z, t = m.student(g.x[idx]), teacher(g.x, GraphOps(g.edge_index, g.num_nodes))[idx]
    assert torch.allclose(terms["kd"], divergence(z, t, temperature=T) * T**2, atol=1e-6)
    ref = F.kl_div(F.log_softmax(z / T, -1), F.softmax(t / T, -1), reduction="batchmean") * T**2
    assert torch.allclose(terms["kd"], ref, atol=1e-5)
    assert m.weights == {"ce": 0.3, "kd": pytest.approx(0.7)}


def test_ffg2m_terms_match_their_definition(setup):
    g, prob, teacher = setup
    torch.manual_seed(0)
    student = mlp((6,), 3, hidden=[8])
    m = FFG2M(student, teacher, temperature=2.0)
    m.attach(prob.ctx)
    idx = prob.ctx.nodes
    terms = m({"idx": idx})
    h, t = student(g.x), m.teacher_logits
    src, dst = prob.ctx.ops.edge_index
    hfk = divergence(h[dst] - h[src], t[dst] - t[src], temperature=2.0) * 4.0
    lfk = divergence(torch.cat([h[idx], h[dst]]), torch.cat([t[idx], t[src]]), temperature=2.0) * 4.0
    assert torch.allclose(terms["hfk"], hfk, atol=1e-6) and torch.allclose(terms["lfk"], lfk, atol=1e-6)
    # node-wise LFK is GLNN's KD term
    node = FFG2M(student, teacher, temperature=2.0, lfk_neighbours=False)
    node.attach(prob.ctx)
    glnn = GLNN(student, teacher, temperature=2.0)
    glnn.attach(prob.ctx)
    assert torch.allclose(node({"idx": idx})["lfk"], glnn({"idx": idx})["kd"], atol=1e-6)


def test_ffg2m_on_a_batch_uses_only_edges_into_the_batch(setup):
    g, prob, teacher = setup
    torch.manual_seed(0)
    student = mlp((6,), 3, hidden=[8])
    m = FFG2M(student, teacher)
    m.attach(prob.ctx)
    idx = prob.ctx.nodes[:10]
    h, t = student(g.x), m.teacher_logits
    src, dst = prob.ctx.ops.edge_index
    keep = torch.isin(dst, idx)
    ref = divergence(h[dst[keep]] - h[src[keep]], t[dst[keep]] - t[src[keep]])
    assert torch.allclose(m({"idx": idx})["hfk"], ref, atol=1e-6)


@pytest.mark.parametrize("name", methods.names("graph"))
def test_every_graph_method_trains(setup, name):
    g, prob, teacher = setup
    torch.manual_seed(0)
    entry = methods.get(name, "graph")
    method = entry.builder(mlp((6,), 3, hidden=[16]), teacher if entry.builder.needs_teacher else None)
    method.attach(prob.ctx)
    opt = torch.optim.Adam(method.parameters(), lr=0.02)
    idx = prob.ctx.nodes if entry.builder.needs_teacher else prob.split.train
    losses = []
    for _ in range(30):
        terms = method({"idx": idx})
        loss = sum(method.weights.get(k, 1.0) * v for k, v in terms.items())
        assert torch.isfinite(loss)
        opt.zero_grad(), loss.backward(), opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert not any(p.requires_grad for p in teacher.module.parameters())


@pytest.mark.parametrize("name", [e.name for e in models.entries("graph") if e.family == "graph"])
def test_every_graph_model_forward(name):
    from distill.models.io import build_model

    g = contextual_sbm(30, 3, 5, seed=0)
    model = build_model(name, {}, (5,), 3, family="graph")
    assert model(g.x, GraphOps(g.edge_index, g.num_nodes)).shape == (30, 3)


def test_node_context_moves_with_its_operators(setup):
    _, prob, _ = setup
    ctx: NodeContext = prob.ctx.to("cpu")
    assert ctx.ops.num_nodes == prob.ctx.ops.num_nodes
