"""Consistency distillation's boundary condition f(x, 0) = x under every parameterisation, its
c_skip / c_out against the reference scalings (diffusers' LCMScheduler, the discrete-time form of
Song et al. 2023, app. C), and an x0 student that no longer collapses to a point."""
import pytest
import torch

from distill.eval.distributions import sliced_wasserstein
from distill.families.diffusion.base import DiffusionContext
from distill.families.diffusion.nets import TimeMLP
from distill.families.diffusion.process import Process, ddim_sample
from distill.registry import methods
from distill.teacher import Teacher

from diff_helpers import TWO, MixtureDenoiser, MixtureSource


def make(kind: str, param: str, seed: int = 0, **params):
    torch.manual_seed(seed)
    process = Process(kind)
    teacher = Teacher(MixtureDenoiser(process, TWO, 0.3))
    ctx = DiffusionContext(process, "x0", param, 16, 1, total_steps=10, seed=0)
    return methods.get("consistency", "diffusion").builder(TimeMLP(2, hidden=32, depth=2), teacher, ctx,
                                                           grid_steps=16, skip=2, **params)


def f(method, x, t):
    """The method's consistency function (before the fix: the student's x0 prediction)."""
    fn = getattr(method, "consistency_fn", None)
    return fn(x, t) if fn is not None else method.student_denoise(x, t)[0]


@pytest.mark.parametrize("kind,param", [("flow", "velocity"), ("flow", "eps"), ("flow", "x0"),
                                        ("vp", "eps"), ("vp", "x0")])
def test_diff_consistency_boundary_is_the_identity(kind, param):
    method = make(kind, param)
    x = 3 * torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = f(method, x, torch.zeros(64))     # t_min = 0: the grid's last time
        assert torch.equal(out, x), (out - x).abs().max()
        # and the EMA target network satisfies it too (the targets at s = 0 are the teacher's points)
        assert torch.equal(method.consistency_fn(x, 0.0, method.target) if hasattr(method, "consistency_fn")
                           else method.student_denoise(x, 0.0, method.target)[0], x)


@pytest.mark.parametrize("scaling", [10.0, 0.002])
def test_diff_consistency_scalings_match_the_lcm_scheduler(scaling):
    diffusers = pytest.importorskip("diffusers")
    method = make("vp", "x0", timestep_scaling=scaling)
    ref = diffusers.LCMScheduler(timestep_scaling=scaling)
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0.0, 1 / 16, 0.25, 0.5, 1.0])
    with torch.no_grad():
        x0_hat = method.student(x, t)             # the x0 student's raw output
        got = method.consistency_fn(x, t)
    for i in range(5):
        # diffusers' timesteps are indices 0..999; ours map t in [0, 1] to t * 999
        c_skip, c_out = ref.get_scalings_for_boundary_condition_discrete(float(t[i]) * 999)
        want = c_skip * x[i] + c_out * x0_hat[i]
        assert torch.allclose(got[i], want, atol=1e-6, rtol=1e-5), (i, got[i], want)
    if scaling < 1:        # both terms matter at these times: the test is not vacuous
        c_skip, c_out = ref.get_scalings_for_boundary_condition_discrete(0.5 * 999)
        assert 0.2 < c_skip < 0.9 and 0.2 < c_out < 0.9


def test_diff_consistency_x0_student_does_not_collapse():
    """A DDPM (vp) teacher and an x0 student from scratch (recipes/diffusion/toy_ddpm.yaml's setting):
    without the boundary condition every constant is self-consistent and the samples collapse."""
    method = make("vp", "x0", seed=3, init_from_teacher=False)
    src = MixtureSource(TWO, 0.3)
    opt = torch.optim.Adam(method.trainable_parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(4)
    method.train()
    for _ in range(300):
        x0 = src.sample(256, g)
        terms = method({"x0": x0, "z": torch.randn(x0.shape, generator=g)})
        opt.zero_grad()
        terms["consistency"].backward()
        opt.step()
    method.eval()
    z = torch.randn(1000, 2, generator=torch.Generator().manual_seed(5))
    ref = ddim_sample(method._teacher, method.process, z, 32, "x0")
    x = method.sample(z, 1)
    # the two modes at x = -1.5 and 1.5: the samples spread over both, as the teacher's do
    assert x[:, 0].std() > 0.7 * ref[:, 0].std(), (x.std(0), ref.std(0))
    assert sliced_wasserstein(x, ref) < 0.35
