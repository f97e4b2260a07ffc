"""CIFAR-style ResNets as used across the KD literature (CRD, DKD benchmarks).

resnet{8,14,20,32,44,56,110}: 3 stages of basic blocks, widths (16, 32, 64);
resnet8x4 / resnet32x4: widths (64, 128, 256) after a 32-channel stem (4x wider).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from distill.registry import register_model


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    def __init__(self, depth: int, widths: tuple[int, int, int, int], in_channels: int, num_classes: int):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError("depth must be 6n + 2")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        blocks, c = [], widths[0]
        for stage, w in enumerate(widths[1:]):
            layer = []
            for i in range(n):
                layer.append(BasicBlock(c, w, 2 if (i == 0 and stage > 0) else 1))
                c = w
            blocks.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3 = blocks
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, classes)
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x).flatten(1))


ARCHS = {
    "resnet8": (8, (16, 16, 32, 64)), "resnet14": (14, (16, 16, 32, 64)), "resnet20": (20, (16, 16, 32, 64)),
    "resnet32": (32, (16, 16, 32, 64)), "resnet44": (44, (16, 16, 32, 64)), "resnet56": (56, (16, 16, 32, 64)),
    "resnet110": (110, (16, 16, 32, 64)),
    "resnet8x4": (8, (32, 64, 128, 256)), "resnet32x4": (32, (32, 64, 128, 256)),
}


@register_model("resnet_cifar", family="any", description="CIFAR ResNets: resnet8..110, resnet8x4, resnet32x4",
                injected=("input_shape", "num_classes"))
def resnet_cifar(input_shape: tuple[int, ...], num_classes: int,
                 arch: Literal["resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56",
                               "resnet110", "resnet8x4", "resnet32x4"] = "resnet8x4") -> nn.Module:
    if len(input_shape) != 3:
        from distill.errors import ConfigError

        raise ConfigError(f"resnet_cifar needs image inputs (C, H, W); the data gives {tuple(input_shape)}.")
    depth, widths = ARCHS[arch]
    return ResNetCifar(depth, widths, input_shape[0], num_classes)
