"""Recipes: YAML validated by pydantic models, with dotted CLI overrides (`train.epochs=5`).

A recipe names its family; each family owns a `RunConfig` subclass (`register_config`).
`load_config` validates structure and types, then the family checks registry names and each
component's `params` against its builder, so that every mistake is reported before work starts.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from distill.errors import ConfigError, did_you_mean


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Component(Strict):
    """A registered thing by name, with keyword parameters for its builder."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class ModelConfig(Component):
    """A model by name: our zoo (`mlp`, `convnet`, ...) or a user's, by source prefix:
    `torchvision:<arch>`, `timm:<arch>`, `hf:<folder or hub id>`, `python:<module>:<callable>`."""

    weights: str | None = Field(None, description="local state dict (.safetensors, .pth/.pt; loaded with "
                                "weights_only=True), or python:module:function returning its path")
    pretrained: bool | None = Field(None, description="the ecosystem's own pretrained weights (downloads; "
                                    "hf: folders use the weights they hold unless false)")
    num_classes: int | None = Field(None, ge=1, description="classes of the head (default: the data's); a head "
                                    "of another size is replaced")

    def check(self, family: str, where: str) -> None:
        """Registry name and params of a zoo model; the weights file of any model (before work starts)."""
        from distill.models.sources import resolve_weights_path, source_of
        from distill.registry import models

        if source_of(self.name) is None:
            entry = models.get(self.name, family, where=f"{where}.name")
            self.params = entry.validate(self.params, f"{where}.params")
        elif ":" not in self.name or not self.name.split(":", 1)[1]:
            raise ConfigError(f"{where}.name: {self.name!r} names no model after the prefix.")
        if self.weights is not None and not str(self.weights).startswith("python:"):
            resolve_weights_path(self.weights, f"{where}.weights")


class OptimizerConfig(Strict):
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)  # sgd only
    betas: tuple[float, float] = (0.9, 0.999)  # adam/adamw only
    nesterov: bool = False
    # false: biases and normalisation weights (every 1-d parameter) get no weight decay, as timm and
    # transformers train; true (the default): every parameter is decayed, as the CIFAR reference code does
    weight_decay_1d: bool = True


class ScheduleConfig(Strict):
    name: Literal["constant", "cosine", "linear", "step"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    step_fraction: float = Field(0.5, gt=0, le=1)  # "step": divide lr by `gamma` after this fraction
    gamma: float = Field(0.1, gt=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)


class TrainConfig(Strict):
    epochs: int = Field(10, ge=0)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimiser steps")
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)


class EngineConfig(Strict):
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    grad_accum: int = Field(1, ge=1)
    clip_grad_norm: float | None = Field(None, gt=0)
    deterministic: bool = False
    eval_every: int = Field(0, ge=0, description="steps between evaluations; 0 = at each epoch end")
    checkpoint_every: int = Field(0, ge=0, description="steps between checkpoints; 0 = at each epoch end")
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1)
    nan_policy: Literal["skip", "raise"] = Field(
        "skip", description="skip: a step whose loss is NaN/Inf is skipped and logged (one device sync per step); "
        "raise: checked at log steps only, and the run stops")
    max_bad_steps: int = Field(10, ge=1, description="stop after this many consecutive skipped steps")
    tensorboard: bool = Field(False, description="TensorBoard scalars under each phase's folder (the same as "
                              "adding tensorboard to trackers)")
    trackers: list[str] = Field(default_factory=list, description="experiment trackers, through accelerate's: "
                                "tensorboard, wandb, mlflow, comet_ml, aim, clearml, dvclive, swanlab, trackio "
                                "(or a name registered with accelerate.tracking.register_tracker_class); one "
                                "tracker run per phase (the teacher, each method)")
    tracker_project: str | None = Field(None, description="the trackers' project / experiment name (default: "
                                        "the recipe's name)")
    tracker_init: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="keyword arguments per tracker, e.g. {wandb: {entity: my-team}}")
    progress: bool = True
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp", description="with several processes: ddp replicates the trained module on each process; fsdp "
        "shards it (per repeated block) and the frozen teacher across the processes (torch FSDP2)")
    compile: bool = Field(False, description="torch.compile the trained network's forward (the `student` of a "
                          "method, in place: weights, state-dict keys and saved files are unchanged)")
    ema: float | None = Field(None, gt=0, lt=1, description="decay of an exponential moving average of the trained "
                              "network's weights (a method's `student`), updated after every optimiser step and "
                              "checkpointed; the phase ends with the averaged weights (evaluations during the "
                              "phase see the raw ones)")
    compile_backend: str = Field("inductor", description="torch.compile backend (inductor, aot_eager, eager, ...)")
    _run_info: dict[str, Any] | None = PrivateAttr(None)  # the run's name, folder and recipe, for the trackers

    @field_validator("trackers")
    @classmethod
    def _known_trackers(cls, names: list[str]) -> list[str]:
        if names:
            from distill.engine.tracking import known_trackers

            from distill.errors import did_you_mean

            known = known_trackers()
            for n in names:
                if n not in known:
                    raise ValueError(f"unknown tracker {n!r}.{did_you_mean(n, known)} Allowed: {', '.join(known)}")
        return list(dict.fromkeys(names))

    @model_validator(mode="after")
    def _ema_without_fsdp(self):
        if self.ema and self.strategy == "fsdp":
            raise ValueError("engine.ema does not combine with engine.strategy=fsdp yet; use ddp, or leave ema unset")
        return self


class MethodConfig(Component):
    """One entry of a recipe's `methods:` list (shared by every family)."""

    label: str | None = Field(None, pattern=r"^[A-Za-z0-9_.\-@]+$", description="name in tables (default: name)")
    weights: dict[str, float] = Field(default_factory=dict, description="override loss-term weights")
    train: TrainConfig | None = Field(None, description="override the shared student training settings")

    @property
    def display(self) -> str:
        return self.label or self.name


def check_methods(methods: list[MethodConfig], family: str) -> None:
    """Registry names, params and unique labels of a `methods:` list (raises ConfigError)."""
    from distill.registry import methods as registry

    seen: set[str] = set()
    for i, m in enumerate(methods):
        entry = registry.get(m.name, family, where=f"methods.{i}.name")
        m.params = entry.validate(m.params, f"methods.{i}.params")
        if m.display in seen:
            raise ConfigError(f"methods.{i}: two methods are both called {m.display!r}; give one a `label`.")
        seen.add(m.display)


class RunConfig(Strict):
    """Fields every family shares. Families subclass it and add their sections."""

    name: str = Field("run", pattern=r"^[A-Za-z0-9_.\-]+$")
    family: str = "classifier"
    seed: int = 0
    output_dir: Path = Path("runs")
    cache_dir: Path = Path("runs/cache")
    train: TrainConfig = Field(default_factory=TrainConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)

    @property
    def run_dir(self) -> Path:
        return self.output_dir / self.name

    def check_components(self) -> None:
        """Check registry names and component params (families override)."""

    def dump_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


_CONFIGS: dict[str, type[RunConfig]] = {}


def register_config(family: str):
    def deco(cls: type[RunConfig]) -> type[RunConfig]:
        _CONFIGS[family] = cls
        return cls

    return deco


def config_class(family: str) -> type[RunConfig]:
    from distill.registry import load_all

    load_all()
    if family not in _CONFIGS:
        raise ConfigError(
            f"family: unknown family {family!r}.{did_you_mean(family, _CONFIGS)} Allowed: {', '.join(sorted(_CONFIGS))}."
        )
    return _CONFIGS[family]


# ---------------------------------------------------------------- overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.0.c=value` -> (["a","b","0","c"], parsed value). Values are read as YAML scalars."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key.sub=value (e.g. train.epochs=5).")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key segment; expected key.sub=value.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node: Any = data
        for i, part in enumerate(path[:-1]):
            where = ".".join(path[: i + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"override {text!r}: {where} is not an index of a list of {len(node)}.")
                node = node[int(part)]
            elif isinstance(node, dict):
                node = node.setdefault(part, {})
                if node is None:
                    node = {}
            else:
                raise ConfigError(f"override {text!r}: {where} is a value, not a section.")
        last = path[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise ConfigError(f"override {text!r}: {last} is not an index of a list of {len(node)}.")
            node[int(last)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"override {text!r}: cannot set a key under a value.")
    return data


# ---------------------------------------------------------------- loading


def _format_validation_error(e: ValidationError, cls: type[BaseModel], data: dict) -> str:
    lines = []
    for err in e.errors():
        loc = [str(x) for x in err["loc"]]
        where = ".".join(loc) or "(root)"
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(cls, loc[:-1])
            hint = did_you_mean(loc[-1], allowed) if allowed else ""
            lines.append(f"{where}: unknown key.{hint} Allowed here: {', '.join(allowed)}.")
        elif err["type"] == "missing":
            lines.append(f"{where}: required field is missing.")
        else:
            lines.append(f"{where}: {err['msg']} (given: {err.get('input')!r}).")
    return "invalid recipe:\n  " + "\n  ".join(lines)


def _allowed_keys(cls: type[BaseModel], loc: list[str]) -> list[str]:
    """Field names of the pydantic model found at `loc` (list indices skipped)."""
    import typing

    model: Any = cls
    for part in loc:
        if part.isdigit():
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return []
        ann = model.model_fields[part].annotation
        # unwrap Optional[...] / list[...]
        for _ in range(3):
            args = [a for a in typing.get_args(ann) if a is not type(None)]
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                break
            if args:
                ann = args[0]
        model = ann
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {str(path)!r}: file not found.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"recipe {str(path)!r}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {str(path)!r}: top level must be a mapping of sections.")
    return data


def load_config(
    source: str | os.PathLike | dict[str, Any], overrides: list[str] | tuple[str, ...] = ()
) -> RunConfig:
    """Read a recipe (path or dict), apply overrides, validate everything. Raises ConfigError."""
    data = dict(source) if isinstance(source, dict) else read_yaml(source)
    data = apply_overrides(data, list(overrides))
    family = data.get("family", "classifier")
    if not isinstance(family, str):
        raise ConfigError(f"family: expected a name (given: {family!r}).")
    cls = config_class(family)
    try:
        cfg = cls(**data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, cls, data)) from None
    cfg.check_components()
    return cfg
