"""Per-step work happens once per optimiser step, not once per micro-batch: under grad_accum = G
the consistency EMA takes one decay step per optimiser step, and the DMD / SiD fake-score network
gets `fake_updates` updates per optimiser step."""
import pytest
import torch

from distill.config import OptimizerConfig, ScheduleConfig, TrainConfig
from distill.families.diffusion.base import DiffusionContext
from distill.families.diffusion.config import DiffusionRunConfig
from distill.families.diffusion.nets import TimeMLP
from distill.families.diffusion.process import Process
from distill.families.diffusion.runner import fit
from distill.registry import methods
from distill.teacher import Teacher

from diff_helpers import TWO, MixtureDenoiser, MixtureSource

PROCESS = Process("flow")
SOURCE = MixtureSource(TWO, 0.3)


def make(name, **params):
    torch.manual_seed(0)
    teacher = Teacher(MixtureDenoiser(PROCESS, TWO, 0.3))
    ctx = DiffusionContext(PROCESS, "x0", "velocity", 8, 1, total_steps=12, seed=0)
    return methods.get(name, "diffusion").builder(TimeMLP(2, hidden=16, depth=2), teacher, ctx, **params)


def test_diff_consistency_ema_moves_once_per_optimiser_step():
    """Two windows of G = 3 micro-batches: after the second window's micro-batches the target is
    mu * target + (1 - mu) * student (the student after the one optimiser step), one decay step."""
    mu, G = 0.9, 3
    method = make("consistency", grid_steps=8, skip=2, ema=mu)
    opt = torch.optim.SGD(method.trainable_parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    method.train()
    before = after_step = None
    for step in range(2):
        if step == 1:
            before = [p.clone() for p in method.target.parameters()]
            after_step = [p.clone() for p in method.student.parameters()]
        for _ in range(G):
            x0 = SOURCE.sample(32, g)
            terms = method({"x0": x0, "z": torch.randn(x0.shape, generator=g), "step": step})
            (terms["consistency"] / G).backward()
        if step == 1:   # the EMA was read before this window's optimiser step
            for p_t, t0, s1 in zip(method.target.parameters(), before, after_step):
                want = mu * t0 + (1 - mu) * s1
                assert torch.allclose(p_t, want, atol=1e-7, rtol=0), (p_t - want).abs().max()
        opt.step()
        opt.zero_grad()
    assert any(not torch.equal(a, b) for a, b in zip(before, after_step))   # the step did move the student


def cfg(grad_accum: int) -> DiffusionRunConfig:
    return DiffusionRunConfig.model_validate(
        {"name": "steps", "family": "diffusion", "data": {"name": "toy2d", "batch_size": 16},
         "engine": {"device": "cpu", "progress": False, "grad_accum": grad_accum}})


TRAIN = TrainConfig(max_steps=4, optimizer=OptimizerConfig(lr=1e-3), schedule=ScheduleConfig(name="constant"))


@pytest.mark.parametrize("name,updates", [("dmd", 2), ("sid", 1)])
@pytest.mark.parametrize("G", [1, 3])
def test_diff_fake_updates_follow_optimiser_steps_through_the_runner(name, updates, G):
    method = make(name, fake_updates=updates)
    count = {"n": 0}
    step = method.fake_opt.step

    def counted(*a, **k):
        count["n"] += 1
        return step(*a, **k)

    method.fake_opt.step = counted
    engine = fit(method, method.trainable_parameters(), SOURCE, TRAIN, cfg(G), seed=0, out_dir=None, name=name)
    assert engine.step_count == 4 and method.calls == 4 * G
    assert count["n"] == updates * engine.step_count, (count["n"], engine.step_count)


@pytest.mark.parametrize("G", [1, 3])
def test_diff_consistency_ema_count_follows_optimiser_steps_through_the_runner(G):
    method = make("consistency", grid_steps=8, skip=2)
    count = {"n": 0}
    update = method._update_target

    def counted():
        count["n"] += 1
        update()

    method._update_target = counted
    engine = fit(method, method.trainable_parameters(), SOURCE, TRAIN, cfg(G), seed=0, out_dir=None, name="c")
    # one EMA step after each optimiser step but the last (read at the next step's first micro-batch)
    assert count["n"] == engine.step_count - 1 == 3
