"""Every classifier method resumes exactly: a phase stopped after a checkpoint and resumed from it
ends with the weights (student and the method's own modules and state) of an uninterrupted one."""
from __future__ import annotations

import pytest
import torch

from distill.config import EngineConfig, OptimizerConfig, TrainConfig
from distill.data.base import ArrayDataset
from distill.families.classifier.runner import train_phase
from distill.registry import methods

from tests.classifier.test_methods_zoo import build


class Stop(Exception):
    pass


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(96, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (96,), generator=g)
    y[::5] = -1
    return ArrayDataset(x, y)


# state that outlives a few steps: self_distill's probe must span the checkpoint to be tested
OVER = {"self_distill": {"probe_size": 80}}


def _phase(name, out, stop_at=None):
    m = build(name, **OVER.get(name, {}))
    if stop_at is not None:
        orig = m.on_step

        def on_step(step, epoch):
            if step == stop_at:
                raise Stop
            orig(step, epoch)
        m.on_step = on_step
    data = _data()
    cfg = TrainConfig(epochs=3, optimizer=OptimizerConfig(lr=3e-3))
    eng = EngineConfig(device="cpu", progress=False, checkpoint_every=4)
    try:
        train_phase(m, data, data, cfg, eng, batch_size=16, seed=0, out_dir=out, eval_fn=lambda: {})
    except Stop:
        return None
    return m


@pytest.mark.parametrize("name", methods.names("classifier"))
def test_stop_and_resume_gives_the_uninterrupted_state(name, tmp_path):
    straight = _phase(name, tmp_path / "a")
    assert _phase(name, tmp_path / "b", stop_at=10) is None  # checkpoints at steps 4 and 8 remain
    assert (tmp_path / "b" / "checkpoints" / "step_00000008.pt").is_file()
    resumed = _phase(name, tmp_path / "b")
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), (name, k, (a[k].float() - b[k].float()).abs().max())
        else:
            assert repr(a[k]) == repr(b[k]), (name, k)
