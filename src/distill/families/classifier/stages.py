"""Staged distillation: one student trained through several stages in order, each of which may
change the data, the teacher and the objective (e.g. general distillation on a broad set, then
task-specific distillation: ERNIE-Tiny, Su et al. 2021; generic-to-specific, G2SD, Huang et al. 2023).

    stages:
      - {label: general, data: {name: fashion_mnist, params: {...}}, method: {name: kd}}
      - {label: specific, method: {name: kd, params: {alpha: 0.5}}, train: {epochs: 10}}

Every stage's data must have the input shape and classes of the recipe's data (the student's
head carries over). The staged student appears in the table as `staged_label`, evaluated on the
recipe's test set, with each stage's test accuracy in its `stages` entry.
"""
from __future__ import annotations

from dataclasses import dataclass

import json
from pathlib import Path
from typing import Any, Callable

import torch

from distill.data.base import DataBundle
from distill.errors import ConfigError
from distill.models.io import build_from_config, load_model
from distill.teacher import Teacher
from distill.utils import seed_everything


@dataclass(frozen=True)
class StagePhases:
    """The runner's own steps a staged student goes through (passed in: the runner calls the stages)."""
    fit_student: Callable[..., dict[str, Any]]
    get_teacher: Callable[..., Any]
    load_data: Callable[..., DataBundle]
    summarize: Callable[..., Any]


def run_stages(cfg, bundle: DataBundle, run_dir: Path, metrics_path: Path, device,
               log: Callable[[str], None], phases: StagePhases) -> tuple[str, dict[str, Any], torch.Tensor, list[dict]]:
    fit_student, get_teacher, load_data, summarize = (phases.fit_student, phases.get_teacher, phases.load_data,
                                                      phases.summarize)

    label = cfg.staged_label
    seed_everything(cfg.seed)  # the same initialisation as every other student
    student = build_from_config(cfg.student.model, bundle.input_shape, bundle.num_classes, where="student.model")
    stage_metrics: dict[str, Any] = {}
    history: list[dict] = []
    res: dict[str, Any] = {}
    for i, st in enumerate(cfg.stages):
        out = run_dir / "students" / label / f"{i}-{st.label}"
        scfg = cfg.model_copy(update={"data": st.data or cfg.data, "teacher": st.teacher or cfg.teacher})
        sbundle = bundle if st.data is None else load_data(scfg, log)
        if sbundle.input_shape != bundle.input_shape or sbundle.num_classes != bundle.num_classes:
            raise ConfigError(f"stages.{i}.data: inputs {sbundle.input_shape} with {sbundle.num_classes} classes, but "
                              f"the student was built for {bundle.input_shape} with {bundle.num_classes}.")
        if (out / "result.json").is_file() and (out / "model.safetensors").is_file():
            log(f"staged student, stage {st.label}: already trained (resumed run)")
            res = json.loads((out / "result.json").read_text())
            student = load_model(out, device=device)
        else:
            t_model, _ = get_teacher(scfg, sbundle, log)
            log(f"staged student, stage {i + 1}/{len(cfg.stages)} [{st.label}]: {st.method.name} on {sbundle.name}")
            res = fit_student(student, st.method, Teacher(t_model.to(device)), sbundle, scfg, out, metrics_path,
                              f"{label}/{st.label}", device, train_cfg=st.train, log=log)
        m, _ = summarize(student, sbundle, out, scfg, device, res)
        stage_metrics[st.label] = {"accuracy": m["accuracy"], "data": sbundle.name, "method": st.method.name}
        offset = history[-1]["epoch"] if history else 0
        history += [{**h, "epoch": h["epoch"] + offset, "stage": st.label} for h in res.get("history", [])]
    final = run_dir / "students" / label / f"{len(cfg.stages) - 1}-{cfg.stages[-1].label}"
    m, lg = summarize(student, bundle, final, cfg, device, {**res, "method": "staged"})
    m["stages"] = stage_metrics
    m["folder"] = str(final)
    return label, m, lg, history
