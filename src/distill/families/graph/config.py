"""The graph family's recipe sections."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from distill.config import check_methods, Component, MethodConfig, register_config, RunConfig, Strict, TrainConfig
from distill.errors import ConfigError


def _default_train() -> TrainConfig:
    from distill.config import OptimizerConfig

    return TrainConfig(epochs=300, optimizer=OptimizerConfig(lr=0.01, weight_decay=5e-4))


class SplitConfig(Strict):
    """CPF splits (as GLNN): labelled / validation nodes per class, the rest test."""

    train_per_class: int = Field(20, ge=1)
    val_per_class: int = Field(30, ge=1)
    setting: Literal["transductive", "inductive"] = "transductive"
    inductive_fraction: float = Field(0.2, gt=0, lt=1, description="share of test nodes held out of the graph")
    seed: int | None = Field(None, description="split seed (default: the run seed)")


class GraphDataConfig(Component):
    batch_size: int = Field(4096, ge=1, description="nodes per step (>= N: full batch)")


class GraphTeacherConfig(Strict):
    model: Component
    train: TrainConfig = Field(default_factory=_default_train)


class GraphStudentConfig(Strict):
    model: Component


GraphMethodConfig = MethodConfig  # the shared entry of a `methods:` list


class GraphEvalConfig(Strict):
    patience: int = Field(50, ge=1, description="stop after this many epochs without a better validation accuracy")
    latency_nodes: int = Field(50, ge=0, description="nodes timed for per-node inference (0 = skip)")


@register_config("graph")
class GraphRunConfig(RunConfig):
    family: Literal["graph"] = "graph"
    data: GraphDataConfig = Field(default_factory=lambda: GraphDataConfig(name="cora"))
    split: SplitConfig = Field(default_factory=SplitConfig)
    teacher: GraphTeacherConfig = Field(default_factory=lambda: GraphTeacherConfig(model=Component(name="sage")))
    student: GraphStudentConfig = Field(default_factory=lambda: GraphStudentConfig(
        model=Component(name="mlp", params={"hidden": [128], "dropout": 0.5})))
    methods: list[GraphMethodConfig] = Field(
        default_factory=lambda: [GraphMethodConfig(name="scratch", label="mlp"), GraphMethodConfig(name="glnn")],
        min_length=1)
    train: TrainConfig = Field(default_factory=_default_train)
    eval: GraphEvalConfig = Field(default_factory=GraphEvalConfig)

    def check_components(self) -> None:
        from distill.registry import datasets, models

        entry = datasets.get(self.data.name, "graph", where="data.name")
        self.data.params = entry.validate(self.data.params, "data.params")
        for where, comp in (("teacher.model", self.teacher.model), ("student.model", self.student.model)):
            entry = models.get(comp.name, "graph", where=f"{where}.name")
            if where == "teacher.model" and entry.family != "graph":
                raise ConfigError(f"teacher.model.name: {comp.name!r} is not a graph model; the teacher must be a GNN "
                                  f"({', '.join(e.name for e in models.entries('graph') if e.family == 'graph')}).")
            if where == "student.model" and entry.family == "graph":
                raise ConfigError(f"student.model.name: {comp.name!r} is a GNN; the student reads node features only "
                                  "(e.g. mlp).")
            comp.params = entry.validate(comp.params, f"{where}.params")
        check_methods(self.methods, "graph")
