"""FitNets (Romero et al. 2015, "FitNets: Hints for Thin Deep Nets").

A student layer ("guided") regresses a teacher layer ("hint") through a learned projector:
loss = CE + hint_weight * MSE(r(f_s), f_t), optionally + kd_weight * KD. Layers are named in
the recipe and tapped by name; the projector (1x1 conv for feature maps, linear for vectors,
with resizing when spatial sizes differ) is built from the shapes seen on the first batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from typing_extensions import Annotated

from distill.errors import ConfigError
from distill.methods.base import masked_cross_entropy
from distill.families.classifier.common import FeatureMethod
from distill.registry import register_method


def make_projector(s_shape: torch.Size, t_shape: torch.Size, norm: bool = True) -> nn.Module:
    """Map student features (B, ...) to the teacher's feature shape (B, ...)."""
    if len(s_shape) == 4 and len(t_shape) == 4:
        if not norm:
            return nn.Conv2d(s_shape[1], t_shape[1], 1)
        return nn.Sequential(nn.Conv2d(s_shape[1], t_shape[1], 1, bias=False), nn.BatchNorm2d(t_shape[1]))
    if len(s_shape) == 2 and len(t_shape) == 2:
        return nn.Linear(s_shape[1], t_shape[1])
    raise ConfigError(f"fitnet: cannot map student features {tuple(s_shape)} to teacher features {tuple(t_shape)}; "
                      "pick layers that are both feature maps (B, C, H, W) or both vectors (B, D).")


@register_method("fitnet", family="classifier", description="FitNets: regress a teacher layer from a student layer via a projector (Romero 2015)",
                 injected=("student", "teacher"))
class FitNet(FeatureMethod):
    def __init__(self, student, teacher, student_layer: str, teacher_layer: str,
                 hint_weight: Annotated[float, Field(ge=0)] = 1.0, kd_weight: Annotated[float, Field(ge=0)] = 0.0,
                 temperature: Annotated[float, Field(gt=0)] = 4.0, projector_norm: bool = True):
        super().__init__(student, teacher, [student_layer], [teacher_layer])
        self.student_layer, self.teacher_layer, self.temperature = student_layer, teacher_layer, temperature
        self.projector_norm = projector_norm
        self.projector: nn.Module | None = None
        self.weights = {"ce": 1.0, "hint": hint_weight, "kd": kd_weight}

    def hparams(self):
        return {"student_layer": self.student_layer, "teacher_layer": self.teacher_layer}

    def build(self, f_s: list[torch.Tensor], f_t: list[torch.Tensor]) -> None:
        self.projector = make_projector(f_s[0].shape, f_t[0].shape, self.projector_norm)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits, t_logits, (f_s,), (f_t,) = self.features(batch)
        assert self.projector is not None, "setup() was not called"
        r = self.projector(f_s)
        if r.dim() == 4 and r.shape[-2:] != f_t.shape[-2:]:
            r = F.interpolate(r, size=f_t.shape[-2:], mode="bilinear", align_corners=False)
        terms = {"ce": masked_cross_entropy(logits, batch["y"]), "hint": F.mse_loss(r.float(), f_t.float())}
        if self.weights["kd"] > 0:
            terms["kd"] = self.kd_loss(logits, t_logits, self.temperature)
        return terms
