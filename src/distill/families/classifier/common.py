"""Pieces shared by the classifier methods: layer taps on student and teacher, small projectors,
dense teacher logits from a cache, and re-initialised copies of a model.

Layer names are module names (`features.6`, `layer2`), or `penultimate`: the input of the model's
last nn.Linear (the embedding the classifier head reads), which exists in MLPs, ConvNets and ResNets
alike, so a recipe can pair a CNN teacher with an MLP student without knowing either's layout.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from distill.errors import ConfigError
from distill.methods.base import ClassifierMethod, masked_cross_entropy
from distill.taps import Taps, find_module, normalize_name
from distill.losses.features import tokens_as_map
from distill.models.outputs import logits_of
from distill.teacher import FeatureCache

PENULTIMATE = "penultimate"


def last_linear_name(model: nn.Module, example: torch.Tensor | None = None) -> str:
    """The classifier head: the last nn.Linear called in a forward pass on `example` (forward order;
    without an example, the last registered one)."""
    from distill.models.sources import head_name

    name = head_name(model, example)
    if name is None:
        raise ConfigError(f"{type(model).__name__} has no nn.Linear head, so it has no `penultimate` layer; "
                          "name a module instead.")
    return normalize_name(name)


class LayerTaps:
    """Taps on several layers of one model, read in the order given (after each forward).

    Hooks are attached on the first forward (`ensure`, called by the method before it runs the
    model): `penultimate` is then resolved by forward order on that input. If a tapped module has
    been replaced since (e.g. by SyncBatchNorm conversion), the taps move to the new module.
    `detach()` removes every hook; methods call it when their phase ends.
    """

    is_layer_taps = True

    def __init__(self, model: nn.Module, layers: list[str]):
        self.model = model
        self.layers = list(layers)
        for name in self.layers:  # fail early on names that do not exist
            if name != PENULTIMATE:
                find_module(model, name)
        self.taps: list[tuple[Taps, str]] = []
        self._resolved: list[str] | None = None
        self._by_forward = False
        self.ensure()  # hooks on now (`penultimate` by registration order until a forward shows the order)

    def ensure(self, x: torch.Tensor | None = None) -> LayerTaps:
        """Resolve names (with the example input `x`) and attach the hooks, or re-attach them where
        the module at a name is no longer the hooked one."""
        if self._resolved is None or (x is not None and not self._by_forward and PENULTIMATE in self.layers):
            real = None
            if PENULTIMATE in self.layers:
                if x is not None:
                    self.detach()  # the detection pass must not fill the taps
                real = last_linear_name(self.model, x)
            self._resolved = [real if n == PENULTIMATE else n for n in self.layers]
            self._by_forward = x is not None
        if len(self.taps) == len(self.layers) and all(t._modules[n] is self._current(n) for t, n in self.taps):
            return self
        self.detach()
        self.taps = [(Taps(self.model, [n], inputs=(orig == PENULTIMATE)).attach(), n)
                     for orig, n in zip(self.layers, self._resolved)]
        return self

    def _current(self, name: str) -> nn.Module:
        try:
            return self.model.get_submodule(name)
        except AttributeError:  # a wrapper prefix inside the model: resolve the normalised name
            return find_module(self.model, name)

    def read(self) -> list[torch.Tensor]:
        if len(self.taps) != len(self.layers):
            raise RuntimeError("LayerTaps.read() after detach(): the method's phase has ended")
        return [t[n] for t, n in self.taps]

    def detach(self) -> None:
        for t, _ in self.taps:
            t.detach()
        self.taps = []


class FeatureMethod(ClassifierMethod):
    """Base of methods that compare student and teacher features at named layers.

    Token features (B, T, D) of vision transformers reach the methods as maps of their patch
    tokens (B, D, h, w) (`losses.features.tokens_as_map`), so CNN and ViT layers pair up.

    Subclasses call `self.features(batch)` -> (student logits, teacher logits, [f_s], [f_t]) and
    build their modules in `build(f_s, f_t)` (called once by `setup` with example features).
    The teacher side comes from the live teacher, or from a `FeatureCache` of exactly the tapped
    layers when one is attached (`teacher.cache_features`; no teacher forward while training).
    """

    supports_feature_cache = True

    def __init__(self, student, teacher, student_layers: list[str], teacher_layers: list[str]):
        super().__init__(student, teacher)
        if len(student_layers) != len(teacher_layers):
            raise ConfigError(f"{type(self).__name__}: {len(student_layers)} student layers but "
                              f"{len(teacher_layers)} teacher layers; give one teacher layer per student layer.")
        self.s_taps = LayerTaps(student, student_layers)
        self.t_taps = LayerTaps(teacher.module, teacher_layers)
        self.feature_cache: FeatureCache | None = None

    @property
    def teacher_layers(self) -> list[str]:
        return self.t_taps.layers

    def teacher_pass(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The live teacher on inputs x: logits (B, C) and the tapped layers' outputs."""
        self.t_taps.ensure(x)
        t_logits = logits_of(self._teacher(x))
        return t_logits, [tokens_as_map(f.detach()) for f in self.t_taps.read()]

    def features(self, batch: dict[str, torch.Tensor]):
        self.s_taps.ensure(batch["x"])
        logits = self.student_logits(batch["x"])
        if self.feature_cache is not None:
            t_logits, f_t = self.feature_cache.lookup(batch["idx"], device=batch["x"].device)
        else:
            t_logits, f_t = self.teacher_pass(batch["x"])
        return logits, t_logits, [tokens_as_map(f) for f in self.s_taps.read()], f_t

    def setup(self, batch: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            _, _, f_s, f_t = self.features(batch)
        self.build(f_s, f_t)
        self.to(batch["x"].device)

    def build(self, f_s: list[torch.Tensor], f_t: list[torch.Tensor]) -> None:
        """Create shape-dependent modules from example features."""

    def base_terms(self, logits: torch.Tensor, t_logits: torch.Tensor, y: torch.Tensor, kd_weight: float,
                   temperature: float = 4.0) -> dict[str, torch.Tensor]:
        """CE on labels, plus Hinton KD when `kd_weight` > 0 (feature losses are often paired with it)."""
        terms = {"ce": masked_cross_entropy(logits, y)}
        if kd_weight > 0:
            terms["kd"] = self.kd_loss(logits, t_logits, temperature)
        return terms


def embedder(shape: torch.Size, dim: int) -> nn.Module:
    """Features (B, ...) -> (B, dim): global average pooling of maps, then a linear layer."""
    if len(shape) == 4:
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(shape[1], dim))
    return nn.Sequential(nn.Flatten(), nn.Linear(int(torch.Size(shape[1:]).numel()), dim))


def flat_features(f: torch.Tensor) -> torch.Tensor:
    """Maps (B, C, H, W) -> their global average (B, C); vectors unchanged. Used by relation losses
    so that a CNN's and an MLP's embeddings can be compared."""
    return f.mean((2, 3)) if f.dim() == 4 else f.flatten(1)


def regressor(s_shape: torch.Size, t_shape: torch.Size, hidden: int | None = None) -> nn.Module:
    """Student features -> teacher feature shape: 1x1 convs for maps, linear layers for vectors.
    Maps of a different size are resized by the caller (`losses.features.match_spatial`)."""
    if len(s_shape) == 4 and len(t_shape) == 4:
        h = hidden or t_shape[1]
        return nn.Sequential(nn.Conv2d(s_shape[1], h, 1), nn.ReLU(), nn.Conv2d(h, t_shape[1], 1))
    if len(s_shape) == 2 and len(t_shape) == 2:
        h = hidden or t_shape[1]
        return nn.Sequential(nn.Linear(s_shape[1], h), nn.ReLU(), nn.Linear(h, t_shape[1]))
    raise ConfigError(f"cannot regress teacher features {tuple(t_shape)} from student features {tuple(s_shape)}: "
                      "pick layers that are both maps (B, C, H, W) or both vectors (B, D).")


def reinitialised_copy(model: nn.Module, seed: int) -> nn.Module:
    """A deep copy of `model` with every resettable layer re-drawn from `seed` (same architecture)."""
    clone = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in clone.modules():
            if hasattr(m, "reset_parameters") and m is not clone:
                m.reset_parameters()
    return clone


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """-sum_c q_c log softmax(z)_c, batch mean. (B, C), (B, C)."""
    return -(target_probs.detach() * F.log_softmax(logits.float(), -1)).sum(-1).mean()
