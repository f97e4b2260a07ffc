"""Review KD (Chen, Liu, Zhao, Jia 2021, "Distilling Knowledge via Knowledge Review").

Each teacher stage is matched by a fusion of the student's same stage and all its deeper stages
(knowledge review): attention-based fusion (ABF) walks the student's features from deep to
shallow, mixing each stage with the upsampled fused deeper one by a learned 2-way spatial
attention; each fused map is projected to the teacher's channels and compared with the
hierarchical context loss (multi-scale pooled MSE). loss = CE + w * sum_l HCL(fused_l, f_t^l).
Layers are listed shallow to deep and must be feature maps. Needs the live teacher.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from typing_extensions import Annotated

from distill.errors import ConfigError
from distill.families.classifier.common import FeatureMethod
from distill.losses.features import hcl_loss, match_spatial
from distill.registry import register_method


class ABF(nn.Module):
    """Fuse a student stage (B, Cs, h, w) with the fused deeper stage (B, mid, h', w')."""

    def __init__(self, in_channels: int, mid: int, out_channels: int, fuse: bool):
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, mid, 1, bias=False), nn.BatchNorm2d(mid))
        self.attention = nn.Sequential(nn.Conv2d(2 * mid, 2, 1), nn.Sigmoid()) if fuse else None
        self.out = nn.Sequential(nn.Conv2d(mid, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor, deeper: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.reduce(x)
        if self.attention is not None and deeper is not None:
            deeper = F.interpolate(deeper, size=x.shape[-2:], mode="nearest")
            a = self.attention(torch.cat([x, deeper], 1))       # (B, 2, h, w)
            x = x * a[:, :1] + deeper * a[:, 1:]
        return self.out(x), x


@register_method("review_kd", family="classifier", description="Review KD: attention-fused multi-stage student features vs teacher stages, HCL (Chen 2021)",
                 injected=("student", "teacher"))
class ReviewKD(FeatureMethod):
    def __init__(self, student, teacher, student_layers: list[str], teacher_layers: list[str],
                 mid_channels: Annotated[int, Field(ge=1)] = 32, weight: Annotated[float, Field(ge=0)] = 1.0,
                 kd_weight: Annotated[float, Field(ge=0)] = 0.0):
        super().__init__(student, teacher, student_layers, teacher_layers)
        self.mid, self.kd_weight = mid_channels, kd_weight
        self.weights = {"ce": 1.0, "review": weight, "kd": kd_weight}
        self.abfs = nn.ModuleList()

    def build(self, f_s, f_t):
        if any(f.dim() != 4 for f in [*f_s, *f_t]):
            raise ConfigError("review_kd: every listed layer must give a feature map (B, C, H, W); "
                              "use a relation method (rkd, sp, crd) for vector features.")
        n = len(f_s)
        for i, (s, t) in enumerate(zip(f_s, f_t)):
            self.abfs.append(ABF(s.shape[1], self.mid, t.shape[1], fuse=i < n - 1))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits, t_logits, f_s, f_t = self.features(batch)
        terms = self.base_terms(logits, t_logits, batch["y"], self.kd_weight)
        loss, deeper = 0.0, None
        for i in reversed(range(len(f_s))):  # deep -> shallow: each stage reviews the deeper ones
            out, deeper = self.abfs[i](f_s[i], deeper)
            loss = loss + hcl_loss(match_spatial(out, f_t[i]), f_t[i])
        terms["review"] = loss
        return terms
