"""The diffusion family's recipe sections."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from distill.config import check_methods, Component, MethodConfig, OptimizerConfig, register_config, RunConfig, ScheduleConfig, Strict, TrainConfig
from distill.errors import ConfigError
from distill.families.diffusion.lora import DiffusionLoraConfig


def _teacher_train() -> TrainConfig:
    return TrainConfig(max_steps=4000, optimizer=OptimizerConfig(lr=2e-3), schedule=ScheduleConfig(name="cosine"))


def _student_train() -> TrainConfig:
    return TrainConfig(max_steps=2000, optimizer=OptimizerConfig(lr=5e-4), schedule=ScheduleConfig(name="cosine"))


class DiffusionDataConfig(Component):
    batch_size: int = Field(512, ge=1)


class DiffusionTeacherConfig(Strict):
    model: Component = Field(default_factory=lambda: Component(name="toy_mlp", params={"hidden": 256, "depth": 4}))
    process: Literal["flow", "vp"] = "flow"
    param: Literal["velocity", "eps", "x0"] = "velocity"
    beta_min: float = Field(0.1, gt=0, description="vp process only")
    beta_max: float = Field(20.0, gt=0, description="vp process only")
    steps: int = Field(64, ge=1, description="the teacher's full sampler step count")
    seed: int = Field(0, description="the teacher's training seed (the same teacher serves every run seed)")
    labels: bool = Field(False, description="train a class-conditional teacher (model with num_classes) on the data's "
                                            "labels, for classifier-free guidance")
    label_drop: float = Field(0.1, ge=0, le=1, description="with labels: probability of the null class in training")
    train: TrainConfig = Field(default_factory=_teacher_train)


class DiffusionStudentConfig(Strict):
    model: Component | None = Field(None, description="default: the teacher's architecture")
    param: Literal["velocity", "eps", "x0"] | None = Field(None, description="default: the teacher's")
    steps: int = Field(1, ge=1, description="the step count the student is distilled for (the headline metric)")
    lora: DiffusionLoraConfig | None = Field(
        None, description="train only LoRA adapters (peft) on a copy of the teacher; needs the teacher's architecture")


DiffusionMethodConfig = MethodConfig  # the shared entry of a `methods:` list


class DiffusionEvalConfig(Strict):
    samples: int = Field(2000, ge=10, description="samples drawn per model and step count")
    steps: list[int] = Field(default_factory=lambda: [1, 2, 4], min_length=1)
    projections: int = Field(256, ge=1, description="directions of the sliced Wasserstein distance")
    seed: int = Field(12345, description="seed of the reference data and the evaluation noise")


@register_config("diffusion")
class DiffusionRunConfig(RunConfig):
    family: Literal["diffusion"] = "diffusion"
    data: DiffusionDataConfig = Field(default_factory=lambda: DiffusionDataConfig(name="toy2d"))
    teacher: DiffusionTeacherConfig = Field(default_factory=DiffusionTeacherConfig)
    student: DiffusionStudentConfig = Field(default_factory=DiffusionStudentConfig)
    methods: list[DiffusionMethodConfig] = Field(
        default_factory=lambda: [DiffusionMethodConfig(name="progressive")], min_length=1)
    train: TrainConfig = Field(default_factory=_student_train)
    eval: DiffusionEvalConfig = Field(default_factory=DiffusionEvalConfig)

    @property
    def student_param(self) -> str:
        return self.student.param or self.teacher.param

    def check_components(self) -> None:
        from distill.registry import datasets, models

        entry = datasets.get(self.data.name, "diffusion", where="data.name")
        self.data.params = entry.validate(self.data.params, "data.params")
        for where, param in (("teacher.param", self.teacher.param), ("student.param", self.student_param)):
            if param == "velocity" and self.teacher.process != "flow":
                raise ConfigError(f"{where}: 'velocity' needs teacher.process=flow (given: {self.teacher.process!r}); "
                                  "use eps or x0 with the vp process.")
        if self.teacher.process == "vp" and self.teacher.beta_max <= self.teacher.beta_min:
            raise ConfigError("teacher.beta_max: must exceed teacher.beta_min.")
        comps = [("teacher.model", self.teacher.model)]
        if self.student.model is not None:
            comps.append(("student.model", self.student.model))
        for where, comp in comps:
            entry = models.get(comp.name, "diffusion", where=f"{where}.name")
            comp.params = entry.validate(comp.params, f"{where}.params")
        check_methods(self.methods, "diffusion")
        if self.student.lora is not None:
            from distill.families.diffusion.lora import require_peft

            require_peft()
            if self.student.model is not None and self.student.model != self.teacher.model:
                raise ConfigError("student.lora: a LoRA student is the teacher plus adapters; leave student.model "
                                  f"unset (given {self.student.model.name} beside teacher {self.teacher.model.name})")
            for i, m in enumerate(self.methods):
                if m.params.get("init_from_teacher", True) is False:
                    raise ConfigError(f"methods.{i}.params.init_from_teacher: a LoRA student starts from the "
                                      "teacher's weights; remove init_from_teacher=false or student.lora")
        if self.student.steps not in self.eval.steps:
            self.eval.steps = sorted({*self.eval.steps, self.student.steps})
