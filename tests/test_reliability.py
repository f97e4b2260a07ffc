"""Faults the engine survives: NaN losses, malicious or truncated checkpoints, a full disk."""
import errno
import os
import pickle

import pytest
import torch
from torch import nn

import distill.utils
from distill.config import EngineConfig, OptimizerConfig
from distill.engine import Engine, build_optimizer
from distill.errors import DistillError


def _loop(tmp_path, losses_nan_at, steps=8, **cfg):
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    eng = Engine(EngineConfig(device="cpu", progress=False, log_every=1, **cfg), tmp_path, seed=0, name="t")
    opt = build_optimizer(OptimizerConfig(name="sgd", lr=0.1), model.parameters())
    model, opt, _ = eng.prepare(model, opt)
    x = torch.randn(16, 4)
    for i in range(steps):
        loss = model(x).pow(2).mean()
        if i in losses_nan_at:
            loss = loss * float("nan")
        eng.step({"mse": loss})
    return eng, model, init


def test_nan_steps_are_skipped_and_logged(tmp_path):
    eng, model, _ = _loop(tmp_path, {2, 3})
    assert eng.bad_steps == 2 and eng.step_count == 8
    assert all(torch.isfinite(p).all() for p in model.parameters())
    lines = (tmp_path / "metrics.jsonl").read_text()
    assert lines.count('"skipped_step": 1') == 2


def test_consecutive_nan_steps_stop_the_run_without_touching_weights(tmp_path):
    with pytest.raises(DistillError, match="3 consecutive steps had a non-finite loss"):
        _loop(tmp_path, set(range(8)), max_bad_steps=3)


def test_raise_policy_stops_at_the_log_step(tmp_path):
    with pytest.raises(DistillError, match="non-finite loss at step"):
        _loop(tmp_path, {0}, nan_policy="raise")


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned_marker",))


def _engine_with_checkpoint(tmp_path):
    eng = Engine(EngineConfig(device="cpu", progress=False), tmp_path, seed=0, name="t")
    model = nn.Linear(2, 2)
    eng.save_checkpoint(model)
    return eng, model


def test_malicious_pickle_checkpoint_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    eng, model = _engine_with_checkpoint(tmp_path)
    path = eng.latest_checkpoint()
    path.write_bytes(pickle.dumps({"model": _Evil()}))
    with pytest.raises(DistillError, match="cannot be read"):
        eng.resume(model)
    assert not (tmp_path / "pwned_marker").exists()


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    eng, model = _engine_with_checkpoint(tmp_path)
    path = eng.latest_checkpoint()
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DistillError, match="cannot be read.*delete it"):
        eng.resume(model)


def test_disk_full_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    eng, model = _engine_with_checkpoint(tmp_path)
    good = eng.latest_checkpoint()
    good_bytes = good.read_bytes()

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(distill.utils, "atomic_write_bytes", full)
    eng.step_count = 5
    with pytest.raises(DistillError, match="No space left on device.*last good checkpoint is step_00000000.pt"):
        eng.save_checkpoint(model)
    assert eng.latest_checkpoint() == good and good.read_bytes() == good_bytes
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))


def test_atomic_write_leaves_no_partial_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def boom(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        distill.utils.atomic_write_bytes(target, b"new contents")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]
