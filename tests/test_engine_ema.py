"""engine.ema: the phase ends with an exponential moving average of the student's weights, as
torch's AveragedModel defines it (the first update copies the weights, then
e <- decay * e + (1 - decay) * w after every optimiser step), and a resumed run ends with the same
average as an uninterrupted one."""
import copy

import torch

from distill.config import EngineConfig, OptimizerConfig, TrainConfig
from distill.data.digits import digits
from distill.families.classifier.runner import train_phase
from distill.methods.scratch import Scratch
from distill.models.io import build_model
from test_engine import _plain_loop


def _model(seed=0):
    torch.manual_seed(seed)
    return build_model("mlp", {"hidden": [32]}, (64,), 10)


def _plain_loop_with_average(model, train, epochs, batch_size, lr, seed, decay):
    """The reference: the plain torch loop of test_engine, and the average written out by hand."""
    avg = {}

    def average(m):
        w = {k: v.detach().clone() for k, v in m.state_dict().items()}
        avg.update(w if not avg else {k: decay * avg[k] + (1 - decay) * w[k] for k in w})

    return _plain_loop(model, train, epochs, batch_size, lr, seed, after_step=average), avg


def test_the_phase_ends_with_the_moving_average_of_the_weights():
    b = digits(layout="flat")
    raw, avg = _plain_loop_with_average(_model(), b.train, 2, 64, 1e-3, 3, 0.9)
    m = _model()
    train_phase(Scratch(m), b.train, b.test, TrainConfig(epochs=2, optimizer=OptimizerConfig(lr=1e-3)),
                EngineConfig(device="cpu", progress=False, ema=0.9), batch_size=64, seed=3, out_dir=None)
    got = m.state_dict()
    for k in avg:
        assert torch.allclose(got[k], avg[k], atol=1e-6), k
    assert any(not torch.allclose(got[k], raw.state_dict()[k], atol=1e-4) for k in avg)  # not the raw weights


def test_a_resumed_run_ends_with_the_same_average(tmp_path):
    b = digits(layout="flat")
    eng = EngineConfig(device="cpu", progress=False, ema=0.9, checkpoint_every=5)
    train = TrainConfig(epochs=2, optimizer=OptimizerConfig(lr=1e-3))
    straight = _model()
    train_phase(Scratch(straight), b.train, b.test, train, eng, batch_size=64, seed=3, out_dir=tmp_path / "a")
    # "killed" after step 7: its last checkpoint is step 5; a fresh process resumes from it
    train_phase(Scratch(_model()), b.train, b.test, train.model_copy(update={"max_steps": 7}), eng, batch_size=64,
                seed=3, out_dir=tmp_path / "b")
    resumed = _model(seed=1)  # other initial weights: everything comes from the checkpoint
    train_phase(Scratch(resumed), b.train, b.test, train, eng, batch_size=64, seed=3, out_dir=tmp_path / "b")
    for (k, a), (_, c) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.allclose(a, c, atol=1e-6), k


def test_ema_is_validated():
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        EngineConfig(ema=1.0)
    with pytest.raises(ValidationError, match="engine.ema does not combine with engine.strategy=fsdp"):
        EngineConfig(ema=0.9, strategy="fsdp")
    assert copy.deepcopy(EngineConfig()).ema is None
