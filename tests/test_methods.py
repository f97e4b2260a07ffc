"""Every registered classifier method runs a few steps: finite loss terms that decrease."""
import pytest
import torch

from distill.data.digits import digits
from distill.methods.dkd import dkd_terms
from distill.losses import forward_kl
from distill.models.io import build_model
from distill.registry import methods
from distill.teacher import Teacher

# parameters for methods that need some (layer names are those of the convnets below:
# features.2 = block 1 output (8x8), features.6 = block 2 output (4x4))
SMOKE_PARAMS = {
    "fitnet": {"student_layer": "features.2", "teacher_layer": "features.6"},
    "nst": {"student_layers": ["features.6"], "teacher_layers": ["features.6"]},
    "review_kd": {"student_layers": ["features.2", "features.6"], "teacher_layers": ["features.2", "features.6"]},
}


@pytest.fixture(scope="module")
def setup():
    b = digits(layout="flat")
    torch.manual_seed(0)
    teacher = build_model("mlp", {"hidden": [64, 64]}, (64,), 10)
    opt = torch.optim.Adam(teacher.parameters(), 3e-3)
    for _ in range(150):
        i = torch.randint(0, len(b.train), (64,))
        loss = torch.nn.functional.cross_entropy(teacher(b.train.x[i]), b.teacher_train.y[i])
        opt.zero_grad(), loss.backward(), opt.step()
    return b, Teacher(teacher)


@pytest.fixture(scope="module")
def conv_setup():
    b = digits(layout="image")
    torch.manual_seed(0)
    teacher = build_model("convnet", {"width": 32, "depth": 2}, (1, 8, 8), 10)
    opt = torch.optim.Adam(teacher.parameters(), 3e-3)
    for _ in range(60):
        i = torch.randint(0, len(b.train), (64,))
        loss = torch.nn.functional.cross_entropy(teacher(b.train.x[i]), b.teacher_train.y[i])
        opt.zero_grad(), loss.backward(), opt.step()
    return b, Teacher(teacher)


@pytest.mark.parametrize("entry", methods.entries("classifier"), ids=lambda e: e.name)
def test_every_method_loss_is_finite_and_decreases(entry, conv_setup):
    b, teacher = conv_setup
    torch.manual_seed(1)
    student = build_model("convnet", {"width": 8, "depth": 2}, (1, 8, 8), 10)
    params = entry.validate(SMOKE_PARAMS.get(entry.name, {}), "params")
    method = entry.builder(student, teacher if entry.builder.needs_teacher else None, **params)
    batch = b.train.batch(torch.arange(128))
    method.setup(batch)
    opt = torch.optim.Adam(method.parameters(), 3e-3)
    losses = []
    for step in range(40):
        method.on_step(step, 0)
        terms = method(batch)
        assert terms and all(torch.isfinite(v) for v in terms.values()), terms
        total = sum(method.weights.get(k, 1.0) * v for k, v in terms.items())
        opt.zero_grad(), total.backward(), opt.step()
        losses.append(float(total.detach()))
    assert losses[-1] < losses[0]


def test_kd_term_is_t_squared_times_the_shared_kl(setup):
    b, teacher = setup
    student = build_model("mlp", {"hidden": [16]}, (64,), 10)
    kd = methods.get("kd", "classifier").builder(student, teacher, temperature=3.0, alpha=0.7)
    batch = b.train.batch(torch.arange(32))
    terms = kd(batch)
    ref = 9.0 * forward_kl(student(batch["x"]), teacher(batch["x"]), temperature=3.0)
    assert torch.allclose(terms["kd"], ref)
    assert kd.weights == {"kd": 0.7, "ce": pytest.approx(0.3)}


def test_kd_ignores_unlabeled_samples_in_ce(setup):
    b, teacher = setup
    student = build_model("mlp", {"hidden": [16]}, (64,), 10)
    kd = methods.get("kd", "classifier").builder(student, teacher)
    batch = b.train.batch(torch.arange(32))
    batch["y"] = torch.full_like(batch["y"], -1)
    terms = kd(batch)
    assert terms["ce"].item() == 0.0 and terms["kd"].item() > 0


def test_dkd_terms_recompose_classical_kd():
    """Zhao et al. eq. 7: KD = TCKD + (1 - p_t^target) * NCKD, per sample."""
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(1, 6, generator=g), torch.randn(1, 6, generator=g)
    target = torch.tensor([2])
    T = 2.0
    tckd, nckd = dkd_terms(s, t, target, T)
    pt = (t / T).softmax(-1)[0, 2]
    kd = forward_kl(s, t, temperature=T) * T**2
    assert torch.allclose(kd, tckd + (1 - pt) * nckd, atol=1e-5)
