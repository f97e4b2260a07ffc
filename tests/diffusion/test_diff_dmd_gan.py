"""DMD2's GAN term in `dmd`: off by default (the old loss, exactly); on, a discriminator head that the
method owns (engine-optimised, in the checkpoint), that learns to tell real from generated samples,
and that reads a TimeMLP's last hidden layer or a UNet's mid-block."""
import pytest
import torch
from torch import nn

from distill.config import EngineConfig
from distill.engine import Engine
from distill.errors import ConfigError
from distill.families.diffusion.base import DiffusionContext
from distill.families.diffusion.gan import Discriminator
from distill.families.diffusion.nets import TimeMLP
from distill.families.diffusion.process import Process
from distill.registry import methods
from distill.teacher import Teacher

from diff_helpers import TWO, MixtureDenoiser, MixtureSource

PROCESS = Process("flow")
SOURCE = MixtureSource(TWO, 0.3)
# dmd with fake_updates=2 on the setup below, recorded before the GAN term existed
OLD_TERMS = [{"dm": 120.5317383, "fake": 3.4557443}, {"dm": 287.9673462, "fake": 2.6063082},
             {"dm": 337.8093262, "fake": 2.8021975}]


def make(student=None, **params):
    torch.manual_seed(0)
    teacher = Teacher(MixtureDenoiser(PROCESS, TWO, 0.3))
    ctx = DiffusionContext(PROCESS, "x0", "velocity", 16, 1, total_steps=10, seed=0)
    student = student if student is not None else TimeMLP(2, hidden=16, depth=2)
    return methods.get("dmd", "diffusion").builder(student, teacher, ctx, fake_updates=2, **params)


def run(method, steps, batch=32):
    opt = torch.optim.Adam(method.trainable_parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    out = []
    method.train()
    for _ in range(steps):
        x0 = SOURCE.sample(batch, g)
        z = torch.randn(x0.shape, generator=g)
        terms = method({"x0": x0, "z": z})
        loss = sum(method.weights.get(k, 1.0) * v for k, v in terms.items())
        opt.zero_grad()
        loss.backward()
        opt.step()
        out.append({k: float(v.detach()) for k, v in terms.items()})
    return out, opt


@pytest.mark.parametrize("params", [{}, {"gan_weight": 0.0}])
def test_diff_dmd_gan_off_gives_the_old_loss_exactly(params):
    method = make(**params)
    assert not hasattr(method, "disc") and "gan" not in method.weights
    terms, _ = run(method, 3)
    for got, want in zip(terms, OLD_TERMS):
        assert got.keys() == want.keys()
        for k in want:
            assert got[k] == pytest.approx(want[k], rel=1e-6, abs=1e-6), (k, got[k], want[k])


def test_diff_dmd_gan_one_step_and_who_owns_what():
    method = make(gan_weight=0.5)
    assert isinstance(method.disc, Discriminator) and method.weights["gan"] == 0.5
    disc = list(method.disc.parameters())
    trainable = list(method.trainable_parameters())
    assert all(any(p is q for q in trainable) for p in disc)                  # the engine optimises the head
    assert not any(p is q for p in trainable for q in method.fake.parameters())
    assert any(k.startswith("disc.") for k in method.state_dict())            # and checkpoints it
    fake_before = [p.clone() for p in method.fake.parameters()]
    method.train()
    x0 = SOURCE.sample(16, torch.Generator().manual_seed(0))
    terms = method({"x0": x0, "z": torch.randn_like(x0)})
    assert set(terms) == {"dm", "disc", "gan", "fake"} and all(torch.isfinite(v) for v in terms.values())
    assert any(not torch.equal(a, b) for a, b in zip(fake_before, method.fake.parameters()))
    # the generator's GAN loss reaches the generator only; the head's loss reaches the head only
    terms["gan"].backward(retain_graph=True)
    assert all(p.grad is None for p in disc)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.student.parameters())
    method.zero_grad(set_to_none=True)
    method.fake.zero_grad(set_to_none=True)       # (its own update left its gradients there)
    terms["disc"].backward()
    assert all(p.grad is None for p in method.student.parameters())
    assert all(p.grad is not None for p in disc)
    assert all(p.grad is None for p in method.fake.parameters())


def test_diff_dmd_gan_discriminator_loss_falls_on_a_fixed_batch():
    method = make(gan_weight=0.5)
    # one fixed batch; real data moved away from the untrained generator's samples, and only the
    # head in the engine's optimiser (the generator held still): the head must learn to separate
    g = torch.Generator().manual_seed(1)
    x0 = SOURCE.sample(64, g) + 3.0
    z = torch.randn(x0.shape, generator=g)
    opt = torch.optim.Adam(method.disc.parameters(), lr=1e-2)
    method.train()
    disc = []
    for _ in range(40):
        terms = method({"x0": x0, "z": z})
        opt.zero_grad()
        sum(method.weights.get(k, 1.0) * v for k, v in terms.items()).backward()
        opt.step()
        disc.append(float(terms["disc"].detach()))
    assert disc[0] == pytest.approx(2 * 0.6931, abs=0.02)           # log 4: a head that knows nothing
    assert sum(disc[-5:]) / 5 < 0.8 * sum(disc[:5]) / 5, disc


def test_diff_dmd_gan_head_and_fake_network_are_saved_and_restored_by_the_engine(tmp_path):
    method = make(gan_weight=0.5)
    _, opt = run(method, 3)
    eng = Engine(EngineConfig(device="cpu", progress=False), tmp_path, seed=0, name="dmd")
    eng.save_checkpoint(method, opt)
    fresh = make(gan_weight=0.5)
    assert any(not torch.equal(a, b) for a, b in zip(method.disc.parameters(), fresh.disc.parameters()))
    opt2 = torch.optim.Adam(fresh.trainable_parameters(), lr=3e-3)
    Engine(EngineConfig(device="cpu", progress=False), tmp_path, seed=0, name="dmd").resume(fresh, opt2)
    assert all(torch.equal(a, b) for a, b in zip(method.disc.parameters(), fresh.disc.parameters()))
    head = list(fresh.disc.parameters())
    assert all(torch.equal(opt2.state[p]["exp_avg"], opt.state[q]["exp_avg"])
               for p, q in zip(head, method.disc.parameters()))
    # the fake denoiser (outside the module tree) and its optimiser come back with them
    assert all(torch.equal(a, b) for a, b in zip(method.fake.parameters(), fresh.fake.parameters()))
    assert fresh.fake_opt.state_dict()["state"].keys() == method.fake_opt.state_dict()["state"].keys()
    assert all(torch.equal(fresh.fake_opt.state[p]["exp_avg"], method.fake_opt.state[q]["exp_avg"])
               for p, q in zip(fresh.fake.parameters(), method.fake.parameters()))


def test_diff_dmd_gan_needs_a_known_feature_site():
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x, t):
            return self.lin(torch.cat([x, t[:, None]], 1))

    with pytest.raises(ConfigError, match="feature site"):
        make(student=Plain(), gan_weight=0.5)


def test_diff_dmd_gan_on_a_tiny_unet_reads_the_mid_block():
    pytest.importorskip("diffusers")
    from distill.families.diffusion.unet import UNetDenoiser, make_unet

    torch.manual_seed(0)
    teacher = Teacher(UNetDenoiser(make_unet(1, 8, widths=(8, 16), num_classes=10, groups=4)))
    student = UNetDenoiser(make_unet(1, 8, widths=(8, 16), num_classes=10, groups=4))
    ctx = DiffusionContext(PROCESS, "velocity", "velocity", 4, 1, total_steps=2, seed=0)
    method = methods.get("dmd", "diffusion").builder(student, teacher, ctx, fake_updates=1, gan_weight=0.1)
    assert method.disc.spatial and method.site.module is method.fake.unet.mid_block
    opt = torch.optim.Adam(method.trainable_parameters(), lr=1e-3)
    head_before = [p.clone() for p in method.disc.parameters()]
    method.train()
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    terms = method({"x0": x0, "z": torch.randn_like(x0)})
    assert set(terms) == {"dm", "disc", "gan", "fake"} and all(torch.isfinite(v) for v in terms.values())
    sum(method.weights.get(k, 1.0) * v for k, v in terms.items()).backward()
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(head_before, method.disc.parameters()))


def test_diff_dmd_gan_through_the_runner_checkpoints_the_head(tmp_path):
    from pathlib import Path

    from distill.api import run as run_recipe

    r = {"name": "gan", "family": "diffusion", "output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"),
         "data": {"name": "toy2d", "params": {"name": "8gaussians"}, "batch_size": 64},
         "teacher": {"model": {"name": "toy_mlp", "params": {"hidden": 32, "depth": 2}}, "steps": 8,
                     "train": {"max_steps": 100, "optimizer": {"lr": 0.003}}},
         "student": {"steps": 1},
         "methods": [{"name": "dmd", "params": {"fake_updates": 1, "gan_weight": 0.3}}],
         "train": {"max_steps": 6}, "eval": {"samples": 100, "steps": [1], "projections": 16},
         "engine": {"device": "cpu", "progress": False, "checkpoint_every": 3, "log_every": 1}}
    s = run_recipe(r, log=lambda m: None, show_table=False)
    assert s["students"]["dmd"]["swd"] > 0
    folder = Path(s["run_dir"]) / "students" / "dmd"
    ckpt = sorted((folder / "checkpoints").glob("step_*.pt"))[-1]
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert any(k.startswith("disc.") for k in state["model"])
    logged = (folder / "metrics.jsonl").read_text()
    assert "loss/disc" in logged and "loss/gan" in logged
