"""Iterative self-distillation with ground-truth weighting (Borup & Andersen 2021, "Even your
Teacher Needs Guidance: Ground-Truth Targets Dampen Regularization Imposed by Self-Distillation").

Training is split into generations of `epochs_per_generation` epochs. Generation 0 is plain CE.
At each new generation the current student is frozen as the previous generation f_prev, and the
student then fits the targets alpha * y + (1 - alpha) * f_prev(x):
    loss = alpha * CE(y, p_s) + (1 - alpha) * T^2 KL(p_prev^T || p_s^T)    (same gradient)
alpha is fixed, or (alpha: null) chosen in closed form. The paper shows that in kernel ridge
regression the next fit is linear in the targets, so its error is a quadratic in alpha with a
closed-form minimiser. We estimate that quadratic as the paper suggests for deep networks: a ridge
smoother on the previous generation's penultimate features stands in for the network's fit; it
is fitted on half of a probe set of recent training samples, and alpha* minimises the squared
error to the labels on the other half (`optimal_alpha`), clipped to [0, 1].
No external teacher; the snapshot is a frozen submodule (so it is checkpointed with the run).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from pydantic import Field
from typing_extensions import Annotated

from distill.methods.base import ClassifierMethod, masked_cross_entropy
from distill.families.classifier.common import PENULTIMATE, LayerTaps
from distill.models.outputs import logits_of
from distill.registry import register_method


def ridge_fit(phi: torch.Tensor, targets: torch.Tensor, ridge: float) -> torch.Tensor:
    """W = (Phi^T Phi + ridge I)^-1 Phi^T Y. (n, d), (n, C) -> (d, C)."""
    d = phi.shape[1]
    gram = phi.t() @ phi + ridge * torch.eye(d, dtype=phi.dtype, device=phi.device)
    return torch.linalg.solve(gram, phi.t() @ targets)


def optimal_alpha(phi_a: torch.Tensor, y_a: torch.Tensor, q_a: torch.Tensor, phi_b: torch.Tensor,
                  y_b: torch.Tensor, ridge: float = 1e-2) -> float:
    """argmin_alpha || Y_b - S(alpha Y_a + (1 - alpha) Q_a) ||^2, S the ridge smoother fitted on a, applied to b.

    phi_*: (n, d) features; y_*: (n, C) one-hot labels; q_a: (n, C) previous-generation probabilities.
    The fit is linear in its targets, so f(alpha) = v + alpha (u - v) with u = S Y_a, v = S Q_a and
    alpha* = <Y_b - v, u - v> / ||u - v||^2, clipped to [0, 1] (1 when u == v).
    """
    phi_a, phi_b = phi_a.double(), phi_b.double()
    u = phi_b @ ridge_fit(phi_a, y_a.double(), ridge)
    v = phi_b @ ridge_fit(phi_a, q_a.double(), ridge)
    diff = u - v
    denom = float((diff * diff).sum())
    if denom < 1e-12:
        return 1.0
    return float(min(1.0, max(0.0, float(((y_b.double() - v) * diff).sum()) / denom)))


@register_method("self_distill", family="classifier", description="Iterative self-distillation, ground truth weighted in closed form (Borup 2021)",
                 injected=("student", "teacher"))
class SelfDistill(ClassifierMethod):
    hard_labels = True  # labels index classes beyond the CE: no MixUp/CutMix
    needs_teacher = False

    def __init__(self, student, teacher=None, epochs_per_generation: Annotated[int, Field(ge=1)] = 2,
                 alpha: Annotated[float, Field(ge=0, le=1)] | None = None,
                 temperature: Annotated[float, Field(gt=0)] = 1.0, ridge: Annotated[float, Field(gt=0)] = 1e-2,
                 probe_size: Annotated[int, Field(ge=8)] = 1024):
        super().__init__(student, None)
        self.epochs_per_generation, self.fixed_alpha = epochs_per_generation, alpha
        self.temperature, self.ridge, self.probe_size = temperature, ridge, probe_size
        self.prev = copy.deepcopy(student).requires_grad_(False)
        self.prev_taps = LayerTaps(self.prev, [PENULTIMATE])
        self.register_buffer("generation", torch.zeros((), dtype=torch.long))
        self.register_buffer("alpha", torch.ones(()))
        self._probe: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.weights = {"ce": 1.0, "sd": 1.0}
        self.alphas: list[float] = []

    def hparams(self):
        return {"epochs_per_generation": self.epochs_per_generation, "alpha": self.fixed_alpha}

    def get_extra_state(self) -> dict:
        """The probe of recent labeled samples, the alphas so far and a pending re-estimate: saved in
        checkpoints with the weights, so a resumed run continues exactly."""
        return {"probe_x": [p[0].cpu() for p in self._probe], "probe_y": [p[1].cpu() for p in self._probe],
                "alphas": list(self.alphas), "pending": bool(getattr(self, "_pending_alpha", False))}

    def set_extra_state(self, state: dict) -> None:
        dev = self.alpha.device
        self._probe = [(x.to(dev), y.to(dev)) for x, y in zip(state["probe_x"], state["probe_y"])]
        self.alphas = list(state["alphas"])
        self._pending_alpha = bool(state["pending"])

    def remember(self, batch: dict[str, torch.Tensor]) -> None:
        """Keep the most recent labeled samples (up to probe_size) for the closed-form alpha."""
        lab = batch["y"] >= 0
        self._probe.append((batch["x"][lab].detach(), batch["y"][lab].detach()))
        while sum(len(y) for _, y in self._probe) - len(self._probe[0][1]) >= self.probe_size:
            self._probe.pop(0)

    @torch.no_grad()
    def estimate_alpha(self, num_classes: int) -> float:
        if self.fixed_alpha is not None:
            return self.fixed_alpha
        x = torch.cat([p[0] for p in self._probe])[-self.probe_size:]
        y = torch.cat([p[1] for p in self._probe])[-self.probe_size:]
        if len(y) < 8:
            return 1.0
        self.prev_taps.ensure(x)
        logits = logits_of(self.prev(x))
        (phi,) = self.prev_taps.read()
        phi = torch.cat([phi.flatten(1).float(), torch.ones(len(y), 1, device=phi.device)], 1)  # + bias
        q = F.softmax(logits.float() / self.temperature, -1)
        onehot = F.one_hot(y, num_classes).float()
        h = len(y) // 2
        return optimal_alpha(phi[:h], onehot[:h], q[:h], phi[h:], onehot[h:], self.ridge)

    def on_step(self, step: int, epoch: int) -> None:
        super().on_step(step, epoch)
        gen = epoch // self.epochs_per_generation
        if gen > int(self.generation):  # a new generation starts: freeze the current student
            self.prev.load_state_dict(self.student.state_dict())
            self.prev.eval()
            self.generation.fill_(gen)
            self._pending_alpha = True

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self.student_logits(batch["x"])
        if self.training:
            self.remember(batch)
        if int(self.generation) == 0:
            return {"ce": masked_cross_entropy(logits, batch["y"]), "sd": logits.sum() * 0.0}
        self.prev.eval()
        if getattr(self, "_pending_alpha", False):
            self.alpha.fill_(self.estimate_alpha(logits.shape[-1]))
            self.alphas.append(float(self.alpha))
            self._pending_alpha = False
        with torch.no_grad():
            prev_logits = logits_of(self.prev(batch["x"]))
        a = float(self.alpha)
        # unlabeled samples (y = -1) take the previous generation's targets only
        return {"ce": a * masked_cross_entropy(logits, batch["y"]),
                "sd": (1.0 - a) * self.kd_loss(logits, prev_logits, self.temperature)}
