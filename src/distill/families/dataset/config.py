"""The dataset family's recipe sections."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from distill.config import check_methods, Component, register_config, RunConfig
from distill.errors import ConfigError
from distill.families.dataset.evaluate import EvalProtocol


class DatasetDataConfig(Component):
    train_per_class: int | None = Field(None, ge=1, description="real training images kept per class (None = all)")
    test_limit: int | None = Field(None, ge=1, description="test images used (None = all)")


class DatasetMethodConfig(Component):
    label: str | None = Field(None, pattern=r"^[A-Za-z0-9_.\-]+$", description="name in tables (default: name)")
    iterations: int | None = Field(None, ge=0, description="outer iterations (default: the recipe's `iterations`)")

    @property
    def display(self) -> str:
        return self.label or self.name


@register_config("dataset")
class DatasetRunConfig(RunConfig):
    family: Literal["dataset"] = "dataset"
    data: DatasetDataConfig = Field(default_factory=lambda: DatasetDataConfig(name="digits"))
    ipc: int = Field(10, ge=1, description="synthetic images per class")
    model: Component = Field(default_factory=lambda: Component(name="convnet"),
                             description="the network used while distilling")
    methods: list[DatasetMethodConfig] = Field(default_factory=lambda: [DatasetMethodConfig(name="dm")], min_length=1)
    iterations: int = Field(200, ge=0, description="outer iterations of every method that sets none")
    synthetic_sets: int = Field(1, ge=1, description="synthetic sets distilled per method (seeds seed..seed+n-1)")
    eval: EvalProtocol = Field(default_factory=EvalProtocol)
    baselines: bool = Field(True, description="random real (with/without augmentation) and full-data references")

    def check_components(self) -> None:
        from distill.families.dataset.augment import check_strategy
        from distill.registry import datasets, models

        entry = datasets.get(self.data.name, "dataset", where="data.name")
        self.data.params = entry.validate(self.data.params, "data.params")
        for where, comp in (("model", self.model), ("eval.model", self.eval.model)):
            entry = models.get(comp.name, "dataset", where=f"{where}.name")
            comp.params = entry.validate(comp.params, f"{where}.params")
        try:
            check_strategy(self.eval.strategy)
        except ValueError as e:
            raise ConfigError(f"eval.strategy: {e}") from None
        check_methods(self.methods, "dataset")
        for m in self.methods:
            if m.iterations is None:
                m.iterations = self.iterations
