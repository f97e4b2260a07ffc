"""Multi-layer perceptron on flattened inputs."""
from __future__ import annotations

import math

import torch
from torch import nn

from distill.registry import register_model


class MLP(nn.Module):
    def __init__(self, in_features: int, num_classes: int, hidden: list[int], dropout: float = 0.0,
                 activation: str = "relu"):
        super().__init__()
        acts = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}
        layers: list[nn.Module] = []
        prev = in_features
        for i, h in enumerate(hidden):
            layers += [nn.Linear(prev, h), acts[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            prev = h
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, ...) -> (B, C)
        return self.head(self.features(x.flatten(1)))


@register_model("mlp", family="any", description="MLP on flattened inputs (hidden sizes, dropout)",
                injected=("input_shape", "num_classes"))
def mlp(input_shape: tuple[int, ...], num_classes: int, hidden: list[int] = [256, 256],  # noqa: B006
        dropout: float = 0.0, activation: str = "relu") -> nn.Module:
    if activation not in ("relu", "gelu", "tanh", "silu"):
        from distill.errors import ConfigError

        raise ConfigError(f"mlp.activation: {activation!r} is not one of relu, gelu, tanh, silu.")
    return MLP(math.prod(input_shape), num_classes, list(hidden), dropout, activation)
