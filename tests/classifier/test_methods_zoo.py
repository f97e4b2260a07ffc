"""Every registered classifier method runs and learns on tiny models; each zoo method's own
mechanics (owned modules, queues, generations, peers, frozen teachers) are checked directly."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distill.losses import divergence
from distill.models.io import build_model, save_model
from distill.registry import methods
from distill.teacher import Teacher

LAYERS = ["features.2", "features.6"]  # ReLU outputs of a depth-2 convnet: (B, C, 8, 8), (B, C, 4, 4)
PARAMS = {
    "at": {"student_layers": LAYERS, "teacher_layers": LAYERS},
    "nst": {"student_layers": LAYERS, "teacher_layers": LAYERS},
    "vid": {"student_layers": LAYERS[1:], "teacher_layers": LAYERS[1:]},
    "review_kd": {"student_layers": LAYERS, "teacher_layers": LAYERS, "mid_channels": 4},
    "ofa": {"student_layers": LAYERS[1:], "branch_width": 8},
    "fitnet": {"student_layer": "features.6", "teacher_layer": "features.6"},
    "crd": {"queue_size": 16, "dim": 8},
    "self_distill": {"epochs_per_generation": 1, "probe_size": 32},
    "random_teacher": {"head_dim": 16},
}


def tiny_batch(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    y[::4] = -1  # a quarter unlabeled
    return {"x": x, "y": y, "idx": torch.arange(n)}


def tiny_teacher():
    torch.manual_seed(1)
    return Teacher(build_model("convnet", {"width": 8, "depth": 2}, (1, 8, 8), 10))


def build(name, student=None, teacher=None, **over):
    torch.manual_seed(0)
    student = student or build_model("convnet", {"width": 4, "depth": 2}, (1, 8, 8), 10)
    entry = methods.get(name, "classifier")
    params = entry.validate({**PARAMS.get(name, {}), **over}, "params")
    teacher = teacher or tiny_teacher()
    return entry.builder(student, teacher if entry.builder.needs_teacher else None, **params)


def total(m, terms):
    return sum(m.weights.get(k, 1.0) * v for k, v in terms.items())


@pytest.mark.parametrize("name", methods.names("classifier"))
def test_every_method_learns_a_fixed_batch(name):
    m = build(name)
    batch = tiny_batch()
    m.setup(batch)
    opt = torch.optim.Adam(m.parameters(), 3e-3)
    losses = []
    for step in range(12):
        m.on_step(step, step // 6)
        loss = total(m, m(batch))
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    # self_distill switches objective at its generation boundary (its new target starts at the
    # current student, so the KL starts near 0): compare within the first generation
    first, last = (losses[0], losses[5]) if name == "self_distill" else (losses[0], losses[-1])
    assert last < first, (name, losses)
    # the teacher is never optimised
    if m.teacher is not None:
        ids = {id(p) for p in m.parameters()}
        assert not any(id(p) in ids for p in m.teacher.module.parameters())


def test_student_gradients_reach_student_from_feature_terms():
    for name, term in [("at", "at"), ("sp", "sp"), ("pkt", "pkt"), ("rkd", "rkd_distance"), ("cc", "cc"),
                       ("nst", "nst"), ("vid", "vid"), ("crd", "crd"), ("review_kd", "review")]:
        m = build(name)
        batch = tiny_batch()
        m.setup(batch)
        m(batch)[term].backward()
        g = m.student.features[0].weight.grad
        assert g is not None and g.abs().sum() > 0, name


def test_mlp_student_with_cnn_teacher_relation_methods():
    for name in ("sp", "pkt", "rkd", "cc", "crd", "dist", "ls_kd", "ofa"):
        student = build_model("mlp", {"hidden": [16]}, (1, 8, 8), 10)
        over = {"student_layers": ["features.1"]} if name == "ofa" else {}
        m = build(name, student=student, **over)
        batch = tiny_batch()
        m.setup(batch)
        assert torch.isfinite(total(m, m(batch))), name


def test_crd_queue_is_fifo_and_in_batch_mode_has_no_queue():
    m = build("crd", queue_size=10, dim=8)
    batch = tiny_batch(n=8)
    m.setup(batch)
    m.train()
    m(batch)
    assert int(m.queue_ptr) == 8
    m(batch)
    assert int(m.queue_ptr) == 6  # wrapped around a queue of 10
    assert torch.allclose(m.queue_t.norm(dim=1), torch.ones(10), atol=1e-5)
    m2 = build("crd", queue_size=0)
    assert not hasattr(m2, "queue_t")


def test_vid_variance_init_and_nll():
    m = build("vid", init_variance=5.0)
    batch = tiny_batch()
    m.setup(batch)
    var = F.softplus(m.raw_variance[0]) + m.eps
    assert torch.allclose(var, torch.full_like(var, 5.0), atol=1e-4)


def test_dist_ls_kd_dkd_and_ofa_use_a_full_k_cache(tmp_path):
    from distill.methods.base import dense_teacher_logits
    from distill.teacher import TeacherCache

    teacher = tiny_teacher()
    batch = tiny_batch()
    cache = TeacherCache.build(tmp_path / "c", teacher, batch["x"], data_hash="d", temperature=2.0, k=10)
    dense = dense_teacher_logits(cache.lookup(batch["idx"]), 10, 2.0)
    live = teacher(batch["x"])
    assert torch.allclose(F.softmax(dense, -1), F.softmax(live, -1), atol=2e-3)
    for name in ("dist", "ls_kd", "dkd", "ofa"):
        m = build(name, teacher=teacher)
        m.setup(batch)
        live_terms = m(batch)
        m.cache = cache
        cached_terms = m(batch)
        for k in live_terms:
            assert float(cached_terms[k].detach()) == pytest.approx(float(live_terms[k].detach()), rel=2e-2, abs=2e-3), (name, k)
    small = TeacherCache.build(tmp_path / "c3", teacher, batch["x"], data_hash="d", temperature=2.0, k=3)
    with pytest.raises(Exception, match="full distribution"):
        dense_teacher_logits(small.lookup(batch["idx"]), 10, 2.0)


def test_label_free_ignores_labels():
    m = build("label_free")
    batch = tiny_batch()
    m.setup(batch)
    a = m(batch)["kd"]
    b = m({**batch, "y": torch.randint(0, 10, (48,))})["kd"]
    assert torch.equal(a, b)
    ref = divergence(m.student(batch["x"]), m.teacher(batch["x"]), "jsd")
    assert torch.allclose(a, ref)


def test_ensemble_mean_of_softmax_and_discriminator(tmp_path):
    teacher = tiny_teacher()
    torch.manual_seed(7)
    other = build_model("convnet", {"width": 8, "depth": 2}, (1, 8, 8), 10)
    save_model(other, tmp_path / "t2")
    m = build("ensemble", teacher=teacher, checkpoints=[str(tmp_path / "t2")], discriminator_weight=1.0)
    batch = tiny_batch()
    m.setup(batch)
    mean_p = (F.softmax(teacher(batch["x"]), -1) + F.softmax(other.eval()(batch["x"]), -1)) / 2
    assert torch.allclose(m.ensemble(batch["x"]).exp(), mean_p, atol=1e-5)
    # the discriminator descends its loss while the student receives the reversed gradient
    terms = m(batch)
    terms["adv"].backward()
    d_grad = [p.grad.clone() for p in m.discriminator.parameters()]
    m.zero_grad()
    logits = m.student(batch["x"])
    plain = F.binary_cross_entropy_with_logits(m.discriminator(F.softmax(logits, -1)),
                                               torch.zeros(48, 1))
    plain.backward()
    s_plain = m.student.classifier.weight.grad.clone()
    m.zero_grad()
    m(batch)["adv"].backward()
    assert torch.allclose(m.student.classifier.weight.grad, -s_plain, atol=1e-6)
    assert all(g.abs().sum() > 0 for g in d_grad)
    assert not any(p is q for p in m.parameters() for q in other.parameters())


def test_self_distill_closed_form_alpha_matches_grid_search():
    from distill.families.classifier.self_distill import optimal_alpha, ridge_fit

    g = torch.Generator().manual_seed(3)
    phi_a, phi_b = torch.randn(40, 6, generator=g), torch.randn(30, 6, generator=g)
    y_a = F.one_hot(torch.randint(0, 4, (40,), generator=g), 4).float()
    y_b = F.one_hot(torch.randint(0, 4, (30,), generator=g), 4).float()
    q_a = F.softmax(torch.randn(40, 4, generator=g) * 2, -1)
    a_star = optimal_alpha(phi_a, y_a, q_a, phi_b, y_b, ridge=0.1)

    def err(a):
        pred = phi_b.double() @ ridge_fit(phi_a.double(), (a * y_a + (1 - a) * q_a).double(), 0.1)
        return float(((y_b - pred) ** 2).sum())

    grid = torch.linspace(0, 1, 2001)
    best = float(grid[torch.tensor([err(float(a)) for a in grid]).argmin()])
    assert a_star == pytest.approx(best, abs=1e-3)
    assert optimal_alpha(phi_a, y_a, y_a, phi_b, y_b) == 1.0  # previous generation == labels


def test_self_distill_generations_freeze_the_previous_student():
    m = build("self_distill", epochs_per_generation=1, alpha=0.25)
    batch = tiny_batch()
    m.setup(batch)
    m.on_step(0, 0)
    t0 = m(batch)
    assert float(t0["sd"]) == 0.0 and int(m.generation) == 0
    with torch.no_grad():
        m.student.classifier.bias.add_(1.0)
    m.on_step(5, 1)
    assert int(m.generation) == 1
    assert torch.equal(m.prev.classifier.bias, m.student.classifier.bias)
    assert not any(p.requires_grad for p in m.prev.parameters())
    terms = m(batch)
    logits = m.student(batch["x"])
    lab = batch["y"] >= 0
    assert torch.allclose(terms["ce"], 0.25 * F.cross_entropy(logits[lab], batch["y"][lab]), atol=1e-6)
    assert torch.allclose(terms["sd"], 0.75 * divergence(logits, m.prev(batch["x"])), atol=1e-6)


def test_online_bdkd_balanced_kl():
    from distill.families.classifier.online_bdkd import balanced_kl
    from distill.losses.relations import entropy

    s, t = torch.randn(5, 10), torch.randn(5, 10) * 3
    fwd = divergence(s, t, "forward_kl", reduction="none")
    rev = divergence(s, t, "reverse_kl", reduction="none")
    hs, ht = entropy(s), entropy(t)
    ref = ((ht / (hs + ht)) * fwd + (hs / (hs + ht)) * rev).mean()
    assert torch.allclose(balanced_kl(s, t), ref, atol=1e-6)
    assert balanced_kl(s, s).abs().item() < 1e-6
    m = build("online_bdkd")
    assert not torch.equal(m.peer.classifier.weight, m.student.classifier.weight)
    batch = tiny_batch()
    m(batch)["bd"].backward()
    assert m.peer.classifier.weight.grad.abs().sum() > 0 and m.student.classifier.weight.grad.abs().sum() > 0


def test_random_teacher_is_frozen_random_and_zero_when_matched():
    m = build("random_teacher", head_dim=16)
    batch = tiny_batch()
    m.setup(batch)
    ids = {id(p) for p in m.parameters()}
    assert not any(id(p) in ids for p in m.random_teacher.module.parameters())
    assert not torch.equal(m.random_teacher.module.classifier.weight, m.student.classifier.weight)
    assert float(m(batch)["rt"]) > 1e-4
    with torch.no_grad():
        m.student.load_state_dict(m.random_teacher.module.state_dict())
        m.head.load_state_dict(m.teacher_head.module.state_dict())
    assert float(m(batch)["rt"]) < 1e-6
