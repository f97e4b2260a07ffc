"""The ConvNet of the data-set-distillation protocol (DC/DSA/DM papers).

depth x [conv3x3(width) -> norm -> ReLU -> pool(2)], then a linear classifier.
Defaults: width 128, depth 3, instance norm (GroupNorm with one group per channel, affine), avg pooling.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn
from typing_extensions import Annotated

from distill.registry import register_model


def _norm(kind: str, channels: int, hw: int) -> nn.Module:
    if kind == "instance":
        return nn.GroupNorm(channels, channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":
        return nn.LayerNorm([channels, hw, hw])
    if kind == "group":
        return nn.GroupNorm(min(4, channels), channels)
    return nn.Identity()


class ConvNet(nn.Module):
    def __init__(self, in_channels: int, size: int, num_classes: int, width: int = 128, depth: int = 3,
                 norm: str = "instance", pooling: str = "avg", activation: str = "relu"):
        super().__init__()
        layers: list[nn.Module] = []
        c, hw = in_channels, size
        for _ in range(depth):
            layers += [nn.Conv2d(c, width, 3, padding=1), _norm(norm, width, hw)]
            layers.append(nn.ReLU() if activation == "relu" else nn.LeakyReLU(0.01))
            c = width
            if pooling != "none" and hw >= 2:
                layers.append(nn.AvgPool2d(2) if pooling == "avg" else nn.MaxPool2d(2))
                hw //= 2
        self.features = nn.Sequential(*layers)
        self.embed_dim = c * hw * hw
        self.classifier = nn.Linear(self.embed_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, D)
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, classes)
        return self.classifier(self.embed(x))


@register_model("convnet", family="any", description="ConvNet (width, depth, norm, pooling) of the DC/DM protocol",
                injected=("input_shape", "num_classes"))
def convnet(input_shape: tuple[int, ...], num_classes: int,
            width: Annotated[int, Field(ge=1)] = 128, depth: Annotated[int, Field(ge=1)] = 3,
            norm: Literal["instance", "batch", "layer", "group", "none"] = "instance",
            pooling: Literal["avg", "max", "none"] = "avg",
            activation: Literal["relu", "leaky_relu"] = "relu") -> nn.Module:
    if len(input_shape) != 3:
        from distill.errors import ConfigError

        raise ConfigError(f"convnet needs image inputs (C, H, W); the data gives {tuple(input_shape)}. "
                          "Use data.params.layout=image, or the mlp model.")
    c, h, _ = input_shape
    return ConvNet(c, h, num_classes, width, depth, norm, pooling, activation)
