"""A data-set distillation killed mid-way resumes from its last checkpoint and gives the set an
uninterrupted run gives: every iterative method's state (images, labels, learned lr, optimisers,
EMA) and the random generators round-trip; the runner writes, uses and removes the checkpoint."""
from __future__ import annotations

import pytest
import torch

from distill.api import run
from distill.families.dataset import runner as R
from distill.registry import methods
from test_ds_run import SMOKE, recipe

ITERATIVE = ["dc", "dsa", "dm", "datadam", "mtt", "ftd", "datm", "sre2l"]


def _recipe(tmp_path, name, iterations=4, **engine):
    r = recipe(tmp_path, [{"name": name, "iterations": iterations, "params": SMOKE.get(name, {})}], baselines=False)
    r["engine"] = {**r["engine"], **engine}
    r["eval"] = {**r["eval"], "curve_every": 2}
    return r


class Killed(Exception):
    pass


@pytest.mark.parametrize("name", ITERATIVE)
def test_killed_distillation_resumes_to_the_uninterrupted_set(name, tmp_path, monkeypatch):
    assert methods.get(name, "dataset").builder.iterative
    full = run(_recipe(tmp_path / "a", name), log=lambda m: None, show_table=False)
    d_full = tmp_path / "a" / "runs" / "tiny"

    cls = methods.get(name, "dataset").builder
    real_step = cls.step
    calls = {"n": 0}

    def dying_step(self, it, iterations):
        calls["n"] += 1
        if calls["n"] == 4:  # iterations 0-2 ran, the checkpoint after iteration 2 exists
            raise Killed()
        return real_step(self, it, iterations)

    monkeypatch.setattr(cls, "step", dying_step)
    r = _recipe(tmp_path / "b", name, checkpoint_every=2)
    with pytest.raises(Killed):
        run(r, log=lambda m: None, show_table=False)
    d = tmp_path / "b" / "runs" / "tiny"
    assert (d / "sets" / f"{name}_set0.ckpt.pt").is_file()
    monkeypatch.setattr(cls, "step", real_step)
    seen: list[str] = []
    again = run(r, resume=True, log=seen.append, show_table=False)
    assert any("resuming at iteration 2 of 4" in m for m in seen)
    assert not (d / "sets" / f"{name}_set0.ckpt.pt").exists()
    a, _ = R.load_synthetic(d_full / "synthetic" / f"{name}_set0.safetensors")
    b, _ = R.load_synthetic(d / "synthetic" / f"{name}_set0.safetensors")
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and a.lr == b.lr
    assert again["students"][name]["accuracy"] == full["students"][name]["accuracy"]
    strip = lambda c: [(p["iteration"], p["accuracy"]) for p in c]  # noqa: E731  (times differ)
    assert strip(again["students"][name]["curve"]) == strip(full["students"][name]["curve"])


def test_unreadable_checkpoint_is_a_clear_error(tmp_path, monkeypatch):
    r = _recipe(tmp_path, "dm", checkpoint_every=2)
    cls = methods.get("dm", "dataset").builder
    real_step = cls.step

    def dying_step(self, it, iterations):
        if it == 3:
            raise Killed()
        return real_step(self, it, iterations)

    monkeypatch.setattr(cls, "step", dying_step)
    with pytest.raises(Killed):
        run(r, log=lambda m: None, show_table=False)
    ckpt = tmp_path / "runs" / "tiny" / "sets" / "dm_set0.ckpt.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:50])
    monkeypatch.setattr(cls, "step", real_step)
    with pytest.raises(Exception, match="cannot be read.*delete it"):
        run(r, resume=True, log=lambda m: None, show_table=False)
