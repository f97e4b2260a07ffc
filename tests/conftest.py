import os

import pytest
import torch

os.environ.setdefault("DISTILL_PROGRESS", "0")
torch.set_num_threads(1)


@pytest.fixture
def tiny_recipe(tmp_path):
    """A quickstart-shaped recipe that runs in a few seconds."""
    return {
        "name": "tiny",
        "family": "classifier",
        "seed": 0,
        "output_dir": str(tmp_path / "runs"),
        "cache_dir": str(tmp_path / "cache"),
        "data": {"name": "digits", "params": {"layout": "flat", "labeled_fraction": 0.2}, "batch_size": 64},
        "teacher": {"model": {"name": "mlp", "params": {"hidden": [64]}},
                    "train": {"epochs": 3, "optimizer": {"lr": 0.003}}},
        "student": {"model": {"name": "mlp", "params": {"hidden": [8]}}},
        "methods": [{"name": "scratch"}, {"name": "kd", "params": {"temperature": 4.0, "alpha": 0.9}}],
        "train": {"epochs": 2, "optimizer": {"lr": 0.003}},
        "engine": {"device": "cpu", "progress": False},
        "eval": {"latency_runs": 3},
    }
