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
    cache_features: bool = Field(False, description="cache, per feature method, the teacher's logits and the "
                                 "layers it taps (fp16 on disk: N x the tapped sizes; methods then run without "
                                 "the teacher)")


class StudentConfig(Strict):
    model: Component


class EvalConfig(Strict):
    ece_bins: int = Field(15, ge=2)
    latency_runs: int = Field(200, ge=1)
    select: Literal["last"] = "last"


class StageConfig(Strict):
    """One stage of a staged student: what changes (data, teacher, objective) and how long."""

    label: str = Field(..., pattern=r"^[A-Za-z0-9_.\-]+$")
    method: MethodConfig
    data: DataConfig | None = Field(None, description="this stage's data (default: the recipe's data)")
    teacher: TeacherConfig | None = Field(None, description="this stage's teacher (default: the recipe's)")
    train: TrainConfig | None = Field(None, description="this stage's training (default: the recipe's train)")


@register_config("classifier")
class ClassifierRunConfig(RunConfig):
    family: Literal["classifier"] = "classifier"
    data: DataConfig = Field(default_factory=lambda: DataConfig(name="digits"))
    teacher: TeacherConfig
    student: StudentConfig
    methods: list[MethodConfig] = Field(default_factory=lambda: [MethodConfig(name="scratch"), MethodConfig(name="kd")],
                                        min_length=1)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    stages: list[StageConfig] = Field(default_factory=list, description="one student trained through these "
                                      "stages in order (e.g. general then task-specific distillation)")
    staged_label: str = Field("staged", pattern=r"^[A-Za-z0-9_.\-]+$", description="the staged student's name in tables")

    def check_components(self) -> None:
        from distill.registry import datasets, methods, models

        entry = datasets.get(self.data.name, "classifier", where="data.name")
        self.data.params = entry.validate(self.data.params, "data.params")
        for where, comp in (("teacher.model", self.teacher.model), ("student.model", self.student.model)):
            entry = models.get(comp.name, "classifier", where=f"{where}.name")
            comp.params = entry.validate(comp.params, f"{where}.params")
        check_methods(self.methods, "classifier")
        teachers = [("teacher", self.teacher)]
        seen = {m.display for m in self.methods}
        for i, st in enumerate(self.stages):
            where = f"stages.{i}"
            entry = methods.get(st.method.name, "classifier", where=f"{where}.method.name")
            st.method.params = entry.validate(st.method.params, f"{where}.method.params")
            if st.data is not None:
                d = datasets.get(st.data.name, "classifier", where=f"{where}.data.name")
                st.data.params = d.validate(st.data.params, f"{where}.data.params")
            if st.teacher is not None:
                e = models.get(st.teacher.model.name, "classifier", where=f"{where}.teacher.model.name")
                st.teacher.model.params = e.validate(st.teacher.model.params, f"{where}.teacher.model.params")
                teachers.append((f"{where}.teacher", st.teacher))
        if self.stages and self.staged_label in seen:
            raise ConfigError(f"staged_label: {self.staged_label!r} is also a method's name; pick another.")
        for where, t in teachers:
            if t.checkpoint is not None and not (t.checkpoint / "model.safetensors").is_file():
                raise ConfigError(f"{where}.checkpoint: {str(t.checkpoint)!r} has no model.safetensors "
                                  "(expected a folder written by distill, e.g. runs/NAME/student).")
