"""Engine parity with a plain PyTorch loop, gradient accumulation, kill-and-resume equality."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import yaml

from distill.config import EngineConfig, OptimizerConfig, ScheduleConfig, TrainConfig
from distill.data.digits import digits
from distill.engine import schedule_factor
from distill.families.classifier.runner import train_phase
from distill.methods.scratch import Scratch
from distill.models.io import build_model, load_model


def _model(seed=0):
    torch.manual_seed(seed)
    return build_model("mlp", {"hidden": [32], "dropout": 0.1}, (64,), 10)


def _plain_loop(model, train, epochs, batch_size, lr, seed, after_step=None):
    """The reference: a loop written with nothing but torch (`after_step(model)` after each step)."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = len(train)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            loss = F.cross_entropy(model(train.x[idx]), train.y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if after_step is not None:
                after_step(model)
    return model


def test_engine_matches_plain_pytorch_loop():
    b = digits(layout="flat")
    ref = _plain_loop(_model(), b.train, epochs=2, batch_size=64, lr=1e-3, seed=3)
    m = _model()
    train_phase(Scratch(m), b.train, b.test, TrainConfig(epochs=2, optimizer=OptimizerConfig(lr=1e-3)),
                EngineConfig(device="cpu", progress=False), batch_size=64, seed=3, out_dir=None)
    for (k, a), (_, c) in zip(ref.state_dict().items(), m.state_dict().items()):
        assert torch.allclose(a, c, atol=1e-6), k


def test_gradient_accumulation_equals_the_large_batch():
    """Two micro-batches of 32 with accumulation give the weights of one batch of 64."""
    b = digits(layout="flat")
    train = TrainConfig(epochs=1, optimizer=OptimizerConfig(name="sgd", lr=0.1))
    big, small = _model_nodrop(), _model_nodrop()
    cfg = dict(device="cpu", progress=False)
    train_phase(Scratch(big), b.train, b.test, train, EngineConfig(**cfg), batch_size=64, seed=1, out_dir=None)
    train_phase(Scratch(small), b.train, b.test, train, EngineConfig(grad_accum=2, **cfg), batch_size=32, seed=1,
                out_dir=None)
    for (k, a), (_, c) in zip(big.state_dict().items(), small.state_dict().items()):
        assert torch.allclose(a, c, atol=1e-5), k


def _model_nodrop():
    torch.manual_seed(0)
    return build_model("mlp", {"hidden": [32]}, (64,), 10)


def test_schedules():
    cos = ScheduleConfig(name="cosine", warmup_steps=10)
    assert schedule_factor(cos, 0, 100) == pytest.approx(0.1)
    assert schedule_factor(cos, 10, 100) == pytest.approx(1.0)
    assert schedule_factor(cos, 100, 100) == pytest.approx(0.0, abs=1e-9)
    step = ScheduleConfig(name="step", step_fraction=0.5, gamma=0.1)
    assert schedule_factor(step, 49, 100) == 1.0 and schedule_factor(step, 50, 100) == pytest.approx(0.1)


def _run_cli(recipe_path, *extra, env=None):
    return subprocess.run([sys.executable, "-m", "distill.cli.main", "run", str(recipe_path), *extra],
                          capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_same_weights(tmp_path, tiny_recipe):
    tiny_recipe["engine"]["checkpoint_every"] = 5
    tiny_recipe["student"]["model"]["params"]["dropout"] = 0.2  # RNG state must survive the restart
    a = dict(tiny_recipe, output_dir=str(tmp_path / "a"))
    b = dict(tiny_recipe, output_dir=str(tmp_path / "b"))
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(a))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(b))

    killed = _run_cli(tmp_path / "a.yaml", env={"DISTILL_FAULT_STEP": "27", "DISTILL_FAULT_PHASE": "kd"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    ckpts = sorted((tmp_path / "a" / "tiny" / "students" / "kd" / "checkpoints").glob("step_*.pt"))
    assert ckpts and ckpts[-1].name == "step_00000025.pt"  # steps 26-27 were lost with the process
    assert not (tmp_path / "a" / "tiny" / "students" / "kd" / "model.safetensors").exists()

    resumed = _run_cli(tmp_path / "a.yaml", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "already trained" in resumed.stderr  # the scratch student was not trained again
    straight = _run_cli(tmp_path / "b.yaml")
    assert straight.returncode == 0, straight.stderr[-2000:]

    for label in ("scratch", "kd"):
        wa = load_model(tmp_path / "a" / "tiny" / "students" / label).state_dict()
        wb = load_model(tmp_path / "b" / "tiny" / "students" / label).state_dict()
        for k in wa:
            assert torch.equal(wa[k], wb[k]), (label, k)
    # metric lines are not duplicated by the resume
    steps = [json.loads(l)["step"] for l in (tmp_path / "a" / "tiny" / "metrics.jsonl").read_text().splitlines()
             if json.loads(l)["phase"] == "kd" and "loss/loss" in json.loads(l)]
    assert steps == sorted(set(steps))


def test_resume_refuses_a_different_recipe(tmp_path, tiny_recipe):
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(dict(tiny_recipe, output_dir=str(tmp_path / "o"))))
    (tmp_path / "o" / "tiny").mkdir(parents=True)
    (tmp_path / "o" / "tiny" / "config.yaml").write_text("name: tiny\n")
    out = _run_cli(tmp_path / "r.yaml", "--resume")
    assert out.returncode == 2 and "differs" in out.stderr
