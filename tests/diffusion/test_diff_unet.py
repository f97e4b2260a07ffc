"""The image path on diffusers: every method trains a few steps on a tiny class-conditional UNet,
a UNet teacher loads from a save_pretrained folder, guidance, and the Frechet distance."""
import pytest
import torch

pytest.importorskip("diffusers")

from distill.eval.frechet import frechet_distance  # noqa: E402
from distill.families.diffusion.base import DiffusionContext  # noqa: E402
from distill.families.diffusion.process import Process, ddim_sample  # noqa: E402
from distill.families.diffusion.unet import UNetDenoiser, conditioning, guidance, load_unet, make_unet  # noqa: E402
from distill.registry import methods, models  # noqa: E402
from distill.teacher import Teacher  # noqa: E402

PROCESS = Process("flow")
SMALL = {"progressive": {"start_steps": 4}, "reflow": {"pairs": 32, "distill_fraction": 0.5},
         "consistency": {"grid_steps": 8, "skip": 2}, "dmd": {"fake_updates": 1}, "sid": {"fake_updates": 1}}


def tiny(seed: int, num_classes: int | None = 10) -> UNetDenoiser:
    torch.manual_seed(seed)
    return UNetDenoiser(make_unet(1, 8, widths=(8, 16), num_classes=num_classes, groups=4))


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(16) % 10
    # class-dependent blobs: a bright square whose position depends on the class
    x = -torch.ones(16, 1, 8, 8)
    for i, c in enumerate(y.tolist()):
        r, col = divmod(c, 4)
        x[i, 0, 2 * r:2 * r + 3, 2 * col:2 * col + 3] = 1.0
    return x, y, torch.randn(x.shape, generator=g)


@pytest.mark.parametrize("name", methods.names("diffusion"))
def test_diff_unet_every_method_trains(name, data):
    x0, y, z = data
    teacher = Teacher(tiny(0))
    student = tiny(1)
    ctx = DiffusionContext(PROCESS, "velocity", "velocity", 4, 1, total_steps=12, seed=0)
    method = methods.get(name, "diffusion").builder(student, teacher, ctx, init_from_teacher=False, **SMALL.get(name, {}))
    opt = torch.optim.Adam(method.trainable_parameters(), lr=3e-3)
    labels = y
    losses = []
    torch.manual_seed(2)
    method.train()
    for _ in range(12):
        with conditioning(labels):
            terms = method({"x0": x0, "z": z})
        assert all(torch.isfinite(v) for v in terms.values()), terms
        loss = sum(method.weights.get(k, 1.0) * v for k, v in terms.items())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    method.finalize()
    method.eval()
    with conditioning(labels):
        out = method.sample(z, 1)
    assert out.shape == x0.shape and torch.isfinite(out).all()
    if name not in ("dmd", "sid"):  # surrogate losses of a moving fake score, not quantities that must fall
        assert sum(losses[-3:]) < sum(losses[:3]), losses


def test_diff_unet_loads_from_folder_and_registry(tmp_path):
    net = tiny(3)
    net.save_pretrained(tmp_path / "unet")
    loaded = load_unet(tmp_path / "unet")
    via_registry = models.get("diffusers_unet", "diffusion").builder(path=str(tmp_path / "unet"), dim=(1, 8, 8))
    x, t, y = torch.randn(4, 1, 8, 8), torch.rand(4), torch.tensor([0, 1, 2, 3])
    with torch.no_grad(), conditioning(y):
        ref = net(x, t)
        assert torch.allclose(loaded(x, t), ref, atol=1e-5)
        assert torch.allclose(via_registry(x, t), ref, atol=1e-5)
    assert loaded.num_classes == 10
    with pytest.raises(FileNotFoundError, match="no diffusers UNet"):
        load_unet(tmp_path / "missing")


def test_diff_unet_guidance_and_label_checks():
    net = tiny(4).eval()
    x, t, y = torch.randn(3, 1, 8, 8), torch.rand(3), torch.tensor([1, 2, 3])
    with torch.no_grad():
        u = net(x, t)                                   # no labels: the null class
        with conditioning(y):
            c = net(x, t)
            with guidance(net, 3.0):
                g = net(x, t)
            with pytest.raises(ValueError, match="labels for a batch"):
                net(x[:2], t[:2])
    assert torch.allclose(g, u + 3.0 * (c - u), atol=1e-5)
    assert net.guidance_scale == 1.0
    teacher = Teacher(net)
    with conditioning(y), guidance(teacher, 2.0):      # a Teacher is guided through its module
        out = ddim_sample(teacher, PROCESS, x, 2, "velocity")
    assert torch.isfinite(out).all()


def test_diff_unet_unconditional_unet():
    net = tiny(5, num_classes=None)
    with conditioning(torch.tensor([1, 2])):            # labels are ignored by an unconditional UNet
        assert net(torch.randn(2, 1, 8, 8), torch.rand(2)).shape == (2, 1, 8, 8)


def test_frechet_distance_zero_on_itself_and_grows_with_shift():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 8, generator=g)
    assert abs(frechet_distance(a, a)) < 1e-6
    d = [frechet_distance(a, a + s) for s in (0.5, 1.0, 2.0)]
    assert d[0] < d[1] < d[2]
    assert abs(d[1] - 8.0) < 1e-4                       # mean shift 1 in 8 dims: |mu|^2 = 8
    b = torch.randn(500, 8, generator=g)
    assert frechet_distance(a, b) < 0.5 * d[0] + 0.5    # two samples of one law are close


class LabelSpy(UNetDenoiser):
    """A UNet denoiser that records, per call, the labels it sees: None, or (batch sizes match, labels)."""

    def __init__(self, net: UNetDenoiser, seen: list):
        super().__init__(net.unet)
        self.seen = seen

    def forward(self, x, t, y=None):
        from distill.families.diffusion.unet import current_labels
        y = current_labels()
        self.seen.append(None if y is None else (y.shape[0] == x.shape[0], y.clone()))
        return super().forward(x, t)


@pytest.mark.parametrize("name,params", [
    ("reflow", {"pairs": 24, "distill_fraction": 0.5}),
    ("dmd", {"fake_updates": 2, "regression_weight": 0.5, "regression_pairs": 24, "gan_weight": 0.1}),
    ("sid", {"fake_updates": 1})])
def test_diff_unet_self_drawn_batches_are_class_conditional(name, params, data):
    """reflow and dmd draw their own batches (teacher couplings, fake-score data): under conditioning(y)
    every teacher, student and fake-score call gets labels of its batch size, with real classes."""
    x0, y, z = data
    seen_t, seen_s = [], []
    teacher = Teacher(LabelSpy(tiny(0), seen_t))
    student = LabelSpy(tiny(1), seen_s)
    ctx = DiffusionContext(PROCESS, "velocity", "velocity", 2, 1, total_steps=2, seed=0)
    method = methods.get(name, "diffusion").builder(student, teacher, ctx, **params)
    assert method.num_classes == 10
    method.train()
    for _ in range(2):
        with conditioning(y):
            terms = method({"x0": x0, "z": z})
        sum(method.weights.get(k, 1.0) * v for k, v in terms.items()).backward()
    spies = [seen_t, seen_s] + ([method.fake.seen] if name != "reflow" else [])  # fake net: a copy of the spy
    for seen in spies:
        assert seen and all(s is not None and s[0] for s in seen), seen
        assert all(int(s[1].max()) < 10 for s in seen)             # real classes, never the null label
    if name == "reflow":
        assert sorted(set(method.pairs[2].tolist())) != [10]
        assert method.pairs[2].shape == (24,)
    # the labels change the student's samples
    method.eval()
    with conditioning(y):
        cond = method.sample(z, 1)
    assert not torch.allclose(cond, method.sample(z, 1))


def test_diff_reflow_couplings_follow_their_classes(data):
    """The pairs are the teacher's ODE under each pair's own class, reproducibly."""
    x0, y, z = data
    teacher = Teacher(tiny(0).eval())
    ctx = DiffusionContext(PROCESS, "velocity", "velocity", 2, 1, total_steps=2, seed=0)
    method = methods.get("reflow", "diffusion").builder(tiny(1), teacher, ctx, pairs=6)
    from distill.families.diffusion.reflow import teacher_couplings
    with conditioning(y):
        pz, px, py = teacher_couplings(method, 6, z, seed=3)
        again = teacher_couplings(method, 6, z, seed=3)
    assert torch.equal(px, again[1]) and torch.equal(py, again[2])
    with conditioning(py):
        assert torch.allclose(px, ddim_sample(teacher, PROCESS, pz, 2, "velocity"), atol=1e-5)
    uz, ux, uy = teacher_couplings(method, 6, z, seed=3)            # no labels set: unconditional pairs
    assert uy is None
    assert torch.allclose(ux, ddim_sample(teacher, PROCESS, uz, 2, "velocity"), atol=1e-5)


def test_diff_fashion_mnist_images_when_installed():
    from distill.data.fashion_mnist import available
    from distill.families.diffusion.images import fashion_mnist_images

    if not available():
        pytest.skip("Fashion-MNIST files not installed (Debian package dataset-fashion-mnist)")
    src = fashion_mnist_images("train", subset=50)
    assert src.dim == (1, 28, 28) and len(src.x) == 50 and src.num_classes == 10
    assert float(src.x.min()) >= -1 and float(src.x.max()) <= 1
    x, y = src.sample_labeled(4, torch.Generator().manual_seed(0))
    assert x.shape == (4, 1, 28, 28) and y.shape == (4,)
    with pytest.raises(ValueError, match="split"):
        fashion_mnist_images("val")
