"""Run the classifier suite (benchmarks/classifier.yaml) with one shared teacher.

1. trains (or reuses from the cache) the suite's ConvNet teacher once, with seed 0, on the whole
   training set (`--teacher-data full`; the students see the suite's subset), and pins it with
   `teacher.checkpoint`, so the 3 seeds vary the student's initialisation and batch order;
2. trains two small MLP teachers on the same data for the `ensemble` method (a heterogeneous
   3-teacher ensemble);
3. runs the grid with `distill.bench` (resumable: rerun the same command to continue);
4. times a `kd` run with and without the teacher-output cache, and an `at` run with and without
   the teacher-feature cache (the caches' speed-ups).

    OMP_NUM_THREADS=1 python benchmarks/classifier.py [--output-dir runs/bench/classifier] [--skip-cache-check]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

from distill.bench import load_suite, parse_shard, run_suite
from distill.config import load_config
from distill.families.classifier.runner import get_teacher, load_data

HERE = Path(__file__).parent


def train_teacher(recipe: dict, overrides: list[str]) -> Path:
    cfg = load_config(recipe, overrides)
    _, folder = get_teacher(cfg, load_data(cfg, print), log=print)
    return Path(folder)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--suite", default=str(HERE / "classifier.yaml"))
    ap.add_argument("--output-dir", default=None)
    ap.add_argument("--skip-cache-check", action="store_true")
    ap.add_argument("--teacher-data", choices=["full", "suite"], default="full",
                    help="train the teachers on the whole training set (default) or on the suite's subset")
    ap.add_argument("--teachers-only", action="store_true", help="train (or find) the teachers and stop")
    ap.add_argument("--shard", default=None, help="I/N: this process runs every N-th cell (see distill bench --shard); "
                    "the cache check runs in shard 1 only")
    args = ap.parse_args()

    raw = yaml.safe_load(Path(args.suite).read_text())
    recipe = raw["recipe"]
    t0 = time.perf_counter()
    base = ["seed=0"] + (["data.params.train_subset=null"] if args.teacher_data == "full" else [])
    teacher = train_teacher(recipe, base)
    extra = [train_teacher(recipe, [*base, "teacher.model.name=mlp", f"teacher.model.params={{hidden: [{h}]}}"])
             for h in (256, 512)]
    t_teachers = time.perf_counter() - t0
    print(f"teachers ready in {t_teachers:.0f}s: {teacher}, ensemble members {[str(e) for e in extra]}")
    if args.teachers_only:
        return

    suite = load_suite(args.suite, args.output_dir)
    suite.overrides.append(f"teacher.checkpoint={teacher}")
    for m in suite.methods:
        if m.name == "ensemble":
            m.params["checkpoints"] = [str(e) for e in extra]
    cmd = "OMP_NUM_THREADS=1 python benchmarks/classifier.py " + " ".join(sys.argv[1:])
    t1 = time.perf_counter()
    shard = parse_shard(args.shard) if args.shard else None
    out = run_suite(suite, command=cmd, shard=shard)
    t_suite = time.perf_counter() - t1
    report = {"teachers_s": round(t_teachers, 1), "suite_session_s": round(t_suite, 1),
              "cells": len(out["cells"]), "sum_cell_wall_s": round(sum(c["wall_s"] for c in out["cells"]), 1)}

    if not args.skip_cache_check and (shard is None or shard[0] == 0):
        from distill.api import run

        # one ConvNet-16 student, seed 0: a logit method (output cache) and a feature method (feature cache)
        checks = {"kd": ('methods=[{"name": "kd"}]', "cache_outputs"),
                  "at": ('methods=[{"name": "at", "params": {"student_layers": [features.6, features.10], '
                         '"teacher_layers": [features.6, features.10]}}]', "cache_features")}
        for label, (method, flag) in checks.items():
            timings = {}
            for cache in (False, True):
                ov = [*suite.overrides, *suite.recipes[0].overrides, "seed=0", "teacher.cache_outputs=false",
                      "teacher.cache_features=false", f"teacher.{flag}={str(cache).lower()}",
                      f"name=cache_check_{label}_{cache}", f"output_dir={suite.output_dir / 'cache_check'}", method]
                run(recipe, ov, overwrite=True, show_table=False, log=lambda m: None)  # warm: builds the cache once
                t = time.perf_counter()
                run(recipe, ov, overwrite=True, show_table=False, log=lambda m: None)
                timings[cache] = time.perf_counter() - t
            report[f"{label}_run_s_live_teacher"] = round(timings[False], 2)
            report[f"{label}_run_s_cached_teacher"] = round(timings[True], 2)
            report[f"{label}_cache_speedup"] = round(timings[False] / timings[True], 2)
    name = "timing.json" if shard is None or shard[0] == 0 else f"timing_shard{shard[0] + 1}.json"
    (suite.output_dir / name).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
