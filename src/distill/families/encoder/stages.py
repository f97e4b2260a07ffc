"""Staged distillation in the encoder family: one student trained through several stages in order,
each continuing from the previous stage's weights, e.g. general distillation on unlabeled text,
then task-specific distillation on the classification head (ERNIE-Tiny, Su et al. 2021; G2SD,
Huang et al. 2023). The recipe shape is the classifier family's `stages:`:

    stages:
      - {label: general, method: {name: embedding_kd}, data: {paths: [...]}, train: {max_steps: 200}}
      - {label: task, method: {name: kd, params: {temperature: 4}}, train: {max_steps: 100}}

A logit method (ce, kd, dkd, dist, ls_kd) trains on the task's texts; any other method on the
stage's `data` (default: the recipe's). The staged student appears in the table as `staged_label`,
with each stage's accuracy and Spearman in its `stages` entry.
"""
from __future__ import annotations

from collections.abc import Callable

import json
from pathlib import Path
from typing import Any

from distill.families.encoder.export import load_encoder


def stage_source(ctx, method, st) -> str:
    if getattr(method, "needs_labels", False):
        return "task"
    return ",".join(Path(p).name for p in (st.data or ctx.cfg.data).paths)


def run_stages(ctx, run_dir: Path | None, metrics_path: Path | None, fit: Callable[..., Any],
               save_student: Callable[..., None]) -> dict[str, Any]:
    """Train the staged student with the runner's `fit` and `save_student` (passed in: the runner
    calls the stages); returns its metrics (with per-stage entries under "stages")."""

    cfg = ctx.cfg
    label = cfg.staged_label
    student = ctx.new_student()  # the same initialisation as every other student
    stages: dict[str, Any] = {}
    out = None
    for i, st in enumerate(cfg.stages):
        out = run_dir / "students" / label / f"{i}-{st.label}" if run_dir else None
        if out is not None and (out / "result.json").is_file() and (out / "modules.json").is_file():
            ctx.log(f"staged student, stage {st.label}: already trained (resumed run)")
            student.load_state_dict(load_encoder(out).state_dict())
            stages[st.label] = json.loads((out / "result.json").read_text())
            continue
        method = ctx.build_method(st.method, student)
        source = stage_source(ctx, method, st)
        ctx.log(f"staged student, stage {i + 1}/{len(cfg.stages)} [{st.label}]: {st.method.name} on {source}")
        engine = fit(method, ctx.loader(method, st.data), cfg, st.train or st.method.train or cfg.train,
                     st.method.weights, out, metrics_path, f"{label}/{st.label}")
        res = ctx.evaluate(student, timing=False)
        res.update(method=st.method.name, data=source, steps=engine.step_count, last_terms=engine.last_terms)
        if out is not None:
            save_student(student, out, ctx, res)
        stages[st.label] = res
    m = ctx.evaluate(student)
    m.update(method="staged", stages=stages, steps=sum(v["steps"] for v in stages.values()))
    if out is not None:
        m["folder"] = str(out)
    return m
