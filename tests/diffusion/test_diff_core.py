"""Distances, the process and its sampler: analytic checks."""
import pytest
import torch

from distill.eval.distributions import mmd, sliced_wasserstein, straightness
from distill.families.diffusion.process import Process, ddim_sample, renoise_sample
from distill.families.diffusion.progressive import two_step_target

from diff_helpers import TWO, MixtureDenoiser


def test_diff_swd_zero_to_itself_and_grows_with_shift():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 2, generator=g)
    y = torch.randn(2000, 2, generator=g)
    assert sliced_wasserstein(x, x) < 1e-9
    d0 = sliced_wasserstein(x, y)
    d = [sliced_wasserstein(x, y + torch.tensor([s, 0.0])) for s in (0.5, 1.0, 2.0)]
    assert d0 < 0.08 < d[0] < d[1] < d[2]
    # W1 of a shift along a unit direction, averaged over the circle: 2/pi * shift
    assert abs(d[2] - 2 / torch.pi * 2.0) < 0.1


def test_diff_swd_unequal_sizes():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(3000, 2, generator=g), torch.randn(500, 2, generator=g)
    assert sliced_wasserstein(x, y) < 0.12


def test_diff_mmd_zero_to_itself_and_grows():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(500, 2, generator=g), torch.randn(500, 2, generator=g)
    assert abs(mmd(x, x)) < 1e-12
    assert mmd(x, y) < mmd(x, y + 0.5) < mmd(x, y + 1.5)


def test_diff_straightness_zero_for_lines_positive_for_curves():
    times = torch.linspace(1, 0, 9)
    a, b = torch.randn(100, 2), torch.randn(100, 2)
    line = torch.stack([t * a + (1 - t) * b for t in times])
    assert straightness(line, times) < 1e-12
    ang = (1 - times) * torch.pi / 2
    arc = torch.stack([torch.stack([torch.cos(u) * torch.ones(100), torch.sin(u) * torch.ones(100)], 1) for u in ang])
    assert straightness(arc, times) > 0.1


@pytest.mark.parametrize("kind,params", [("flow", ["velocity", "eps", "x0"]), ("vp", ["eps", "x0"])])
def test_diff_parameterisation_round_trip(kind, params):
    p = Process(kind)
    x0, eps = torch.randn(64, 2), torch.randn(64, 2)
    t = torch.rand(64) * 0.9 + 0.05
    x_t = p.noisy(x0, eps, t)
    for param in params:
        x0_hat, eps_hat = p.denoise(p.target(x0, eps, param), x_t, t, param)
        torch.testing.assert_close(x0_hat, x0, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(eps_hat, eps, atol=1e-4, rtol=1e-4)
        # a DDIM step back to t recovers x_t; to 0 gives x0
        torch.testing.assert_close(p.ddim_step(x0_hat, eps_hat, t), x_t, atol=1e-4, rtol=1e-4)


def test_diff_velocity_needs_flow():
    with pytest.raises(ValueError, match="velocity"):
        Process("vp").check_param("velocity")


@pytest.mark.parametrize("kind", ["flow", "vp"])
def test_diff_ddim_with_exact_gaussian_denoiser_reproduces_it(kind):
    process = Process(kind)
    mu, std = torch.tensor([[1.0, -2.0]]), 0.5
    net = MixtureDenoiser(process, mu, std)
    z = torch.randn(4000, 2, generator=torch.Generator().manual_seed(0))
    x = ddim_sample(net, process, z, 200, "x0", t_max=1.0 if kind == "flow" else 0.999)
    torch.testing.assert_close(x.mean(0), mu[0], atol=0.03, rtol=0)
    torch.testing.assert_close(x.std(0), torch.full((2,), std), atol=0.03, rtol=0)
    # towards a single point the flow ODE paths are straight lines; towards two clusters they bend
    if kind == "flow":
        shift = MixtureDenoiser(process, mu, 0.0)
        _, traj, times = ddim_sample(shift, process, z[:200], 16, "x0", return_traj=True)
        assert straightness(traj, times) < 1e-6
        _, traj, times = ddim_sample(MixtureDenoiser(process, TWO, 0.3), process, z[:200], 16, "x0", return_traj=True)
        assert straightness(traj, times) > 0.01


def test_diff_renoise_one_step_equals_ddim_one_step():
    process = Process("flow")
    net = MixtureDenoiser(process, TWO, 0.3)
    z = torch.randn(100, 2)
    torch.testing.assert_close(renoise_sample(net, process, z, 1, "x0"), ddim_sample(net, process, z, 1, "x0"))


@pytest.mark.parametrize("kind", ["flow", "vp"])
def test_diff_progressive_target_equals_two_teacher_steps(kind):
    process = Process(kind)
    net = MixtureDenoiser(process, TWO, 0.3)
    x_t = torch.randn(50, 2)
    t, t1, t2 = torch.full((50,), 0.8), torch.full((50,), 0.6), torch.full((50,), 0.4)
    x1 = process.ddim_step(*process.denoise(net(x_t, t), x_t, t, "x0"), t1)
    x2 = process.ddim_step(*process.denoise(net(x1, t1), x1, t1, "x0"), t2)
    target = two_step_target(process, x_t, x2, t, t2)
    # one student DDIM step with x0 = target lands on the teacher's two-step point
    _, eps = process.denoise(target, x_t, t, "x0")
    torch.testing.assert_close(process.ddim_step(target, eps, t2), x2, atol=1e-4, rtol=1e-4)
    # at the last pair (t2 = 0) the target is the teacher's two-step sample itself
    z = torch.zeros(50)
    x2_end = process.ddim_step(*process.denoise(net(x1, t1), x1, t1, "x0"), z)
    torch.testing.assert_close(two_step_target(process, x_t, x2_end, t, z), x2_end)
