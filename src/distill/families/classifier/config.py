"""The classifier family's recipe sections."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from distill.config import Component, MethodConfig, RunConfig, Strict, TrainConfig, check_methods, register_config
from distill.errors import ConfigError


class DataConfig(Component):
    batch_size: int = Field(64, ge=1)
    eval_batch_size: int = Field(512, ge=1)
    drop_last: bool = Field(False, description="drop the uneven last batch of each epoch (always done with --nproc > 1)")


class TeacherConfig(Strict):
    model: Component
    checkpoint: Path | None = Field(None, description="folder with model.safetensors + config.json; skips training")
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=30))
    cache_outputs: bool = Field(False, description="cache top-k teacher logits on disk (logit-only methods)")
    cache_top_k: int | None = Field(None, ge=1, description="k of the output cache (default: all classes)")


class StudentConfig(Strict):
    model: Component


class EvalConfig(Strict):
    ece_bins: int = Field(15, ge=2)
    latency_runs: int = Field(200, ge=1)
    select: Literal["last"] = "last"


@register_config("classifier")
class ClassifierRunConfig(RunConfig):
    family: Literal["classifier"] = "classifier"
    data: DataConfig = Field(default_factory=lambda: DataConfig(name="digits"))
    teacher: TeacherConfig
    student: StudentConfig
    methods: list[MethodConfig] = Field(default_factory=lambda: [MethodConfig(name="scratch"), MethodConfig(name="kd")],
                                        min_length=1)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    def check_components(self) -> None:
        from distill.registry import datasets, models

        entry = datasets.get(self.data.name, "classifier", where="data.name")
        self.data.params = entry.validate(self.data.params, "data.params")
        for where, comp in (("teacher.model", self.teacher.model), ("student.model", self.student.model)):
            entry = models.get(comp.name, "classifier", where=f"{where}.name")
            comp.params = entry.validate(comp.params, f"{where}.params")
        check_methods(self.methods, "classifier")
        if self.teacher.checkpoint is not None and not (self.teacher.checkpoint / "model.safetensors").is_file():
            raise ConfigError(f"teacher.checkpoint: {str(self.teacher.checkpoint)!r} has no model.safetensors "
                              "(expected a folder written by distill, e.g. runs/NAME/student).")
