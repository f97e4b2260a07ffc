"""The classifier family's recipe sections."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from distill.config import Component, MethodConfig, ModelConfig, RunConfig, Strict, TrainConfig, check_methods, register_config
from distill.data.transforms import TransformConfig
from distill.errors import ConfigError


class DataConfig(Component):
    batch_size: int = Field(64, ge=1)
    eval_batch_size: int = Field(512, ge=1)
    drop_last: bool = Field(False, description="drop the uneven last batch of each epoch (always done with --nproc > 1)")
    transforms: TransformConfig | None = Field(None, description="train/eval image transforms (torchvision v2); "
                                               "data then streams through a DataLoader, with fresh views each epoch")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes (streamed data)")
    pin_memory: bool | None = Field(None, description="pinned host memory for the loader (default: on with a GPU)")


class TeacherConfig(Strict):
    model: ModelConfig
    checkpoint: Path | None = Field(None, description="folder with model.safetensors + config.json; skips training")
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=30))
    cache_outputs: bool = Field(False, description="cache top-k teacher logits on disk (logit-only methods)")
    cache_top_k: int | None = Field(None, ge=1, description="k of the output cache (default: all classes)")
    cache_dtype: Literal["float16", "float32"] = Field("float16", description="logits in the augmentation-aware "
                                                         "output cache")
    fit: Literal["auto", "always", "never"] = Field(
        "auto", description="auto: train or fine-tune the teacher (once, cached) unless its weights cover the whole "
        "model (`weights:` or `pretrained:` with a head for these classes); always; never (use it as built)")
    cache_features: bool = Field(False, description="cache, per feature method, the teacher's logits and the "
                                 "layers it taps (fp16 on disk: N x the tapped sizes; methods then run without "
                                 "the teacher)")


class StudentConfig(Strict):
    model: ModelConfig


class EvalConfig(Strict):
    ece_bins: int = Field(15, ge=2)
    latency_runs: int = Field(200, ge=1)
    select: Literal["last", "best"] = Field("last", description="the student a method ends with: its last weights, "
                                             "or those of the evaluation with the best validation accuracy")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="validation split held out of train (stratified) "
                                "when the data has none; it chooses the best epoch and the best student. 0 = none "
                                "(then the test set does, and the summary says so)")


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
            comp.check("classifier", where)
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
                st.teacher.model.check("classifier", f"{where}.teacher.model")
                teachers.append((f"{where}.teacher", st.teacher))
        if self.stages and self.staged_label in seen:
            raise ConfigError(f"staged_label: {self.staged_label!r} is also a method's name; pick another.")
        for where, t in teachers:
            if t.checkpoint is not None and not (t.checkpoint / "model.safetensors").is_file():
                raise ConfigError(f"{where}.checkpoint: {str(t.checkpoint)!r} has no model.safetensors "
                                  "(expected a folder written by distill, e.g. runs/NAME/student).")
