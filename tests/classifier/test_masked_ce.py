"""The classifier CE: its fast path (a phase whose data has no unlabelled sample) gives the masked
CE's value, and train_phase takes it only for such data."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.config import EngineConfig, OptimizerConfig, TrainConfig
from distill.data.base import ArrayDataset
from distill.families.classifier.runner import train_phase
from distill.methods import base
from distill.methods.scratch import Scratch


def test_fast_path_equals_the_masked_mean_and_never_hides_unlabelled_batches():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(16, 5, generator=g)
    y = torch.randint(0, 5, (16,), generator=g)
    slow = base.masked_cross_entropy(z, y)
    with base.labels_complete(True):
        fast = base.masked_cross_entropy(z, y)
    assert torch.allclose(fast, slow, atol=1e-7) and torch.allclose(slow, F.cross_entropy(z, y), atol=1e-7)
    none = torch.full((16,), -1)
    assert base.masked_cross_entropy(z, none).item() == 0.0  # outside a complete phase: 0, not NaN
    part = y.clone()
    part[::2] = -1
    assert torch.allclose(base.masked_cross_entropy(z, part), F.cross_entropy(z[1::2], y[1::2]), atol=1e-7)


def test_train_phase_takes_the_fast_path_only_for_fully_labelled_data(monkeypatch):
    seen = []
    real = base.masked_cross_entropy

    def spy(logits, y):
        seen.append(base.LABELS_COMPLETE.get())
        return real(logits, y)

    monkeypatch.setattr("distill.methods.scratch.masked_cross_entropy", spy)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 6, generator=g), torch.randint(0, 3, (64,), generator=g)
    for labels, want in ((y, True), (torch.where(torch.arange(64) % 4 == 0, -1, y), False)):
        seen.clear()
        model = torch.nn.Linear(6, 3)
        train_phase(Scratch(model), ArrayDataset(x, labels), ArrayDataset(x, y),
                    TrainConfig(epochs=1, optimizer=OptimizerConfig(lr=1e-2)),
                    EngineConfig(device="cpu", progress=False), batch_size=16, seed=0, out_dir=None,
                    eval_fn=lambda: {})
        assert seen and set(seen) == {want}
    assert base.LABELS_COMPLETE.get() is False  # reset after the phase
