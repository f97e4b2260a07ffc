"""Every registered model builds and runs a forward pass; save/load round-trips."""
import pytest
import torch

from distill.models.io import build_model, load_model, save_model
from distill.registry import models

SHAPES = {"mlp": (1, 8, 8), "convnet": (1, 8, 8), "resnet_cifar": (3, 16, 16)}


@pytest.mark.parametrize("entry", models.entries("classifier"), ids=lambda e: e.name)
def test_every_registered_model_runs_forward(entry):
    shape = SHAPES.get(entry.name, (1, 8, 8))
    model = build_model(entry.name, {}, shape, 10)
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("arch", ["resnet8", "resnet8x4", "resnet32x4"])
def test_resnet_cifar_variants(arch):
    model = build_model("resnet_cifar", {"arch": arch}, (3, 32, 32), 100)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    m = build_model("convnet", {"width": 8, "depth": 2}, (1, 8, 8), 10)
    save_model(m, tmp_path / "s")
    m2 = load_model(tmp_path / "s")
    x = torch.randn(3, 1, 8, 8)
    assert torch.allclose(m.eval()(x), m2(x))
