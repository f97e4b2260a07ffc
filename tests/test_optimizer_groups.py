"""`train.optimizer.weight_decay_1d: false`: biases and norm weights get no weight decay (the
timm / transformers convention), every other parameter the recipe's decay; true decays all."""
import pytest
import torch
from torch import nn

from distill.config import OptimizerConfig
from distill.engine import build_optimizer


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.Linear(3, 2))


@pytest.mark.parametrize("name", ["sgd", "adamw"])
@pytest.mark.parametrize("decay_1d", [True, False])
def test_one_step_of_pure_decay_touches_exactly_the_decayed_parameters(name, decay_1d):
    net = _net()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    cfg = OptimizerConfig(name=name, lr=0.1, weight_decay=0.5, momentum=0.0, weight_decay_1d=decay_1d)
    opt = build_optimizer(cfg, net.parameters())
    for p in net.parameters():  # zero gradients: the step is the weight decay alone
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in net.named_parameters():
        decayed = decay_1d or p.ndim > 1
        # SGD: p - lr * wd * p; AdamW (decoupled): p * (1 - lr * wd); the same here: 0.95 p
        want = before[n] * (1 - 0.1 * 0.5) if decayed else before[n]
        assert torch.allclose(p.detach(), want, atol=1e-7), (n, decayed)
    if not decay_1d:
        assert [g["weight_decay"] for g in opt.param_groups] == [0.5, 0.0]
        assert sum(len(g["params"]) for g in opt.param_groups) == 6


def test_the_option_is_validated_from_recipes():
    assert OptimizerConfig().weight_decay_1d is True
    with pytest.raises(Exception):
        OptimizerConfig(weight_decay_1d="sometimes")
