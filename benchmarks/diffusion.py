"""Diffusion step distillation on 2-D toys: every method at 1, 2 and 4 steps, beside the teacher at
its full step count and the teacher run at the same step counts; mean +- std over seeds.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/diffusion.py --toys moons 8gaussians --seeds 0 1 2 [--set train.max_steps=500]
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/diffusion.py --recipe recipes/diffusion/toy_guidance.yaml --toys 8gaussians --seeds 0 --out runs/bench/diffusion_guidance

Writes runs/bench/diffusion/results.json and results.md (the table in docs/benchmarks/diffusion.md).
The teacher (one per toy, seed 0) is trained once and cached; student seeds vary. Methods that
report guided samples (guidance distillation) get a second table: SWD to the teacher's classifier-free
guided samples at its full step count and the same w, class accuracy, sampling time.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def fmt(vals: list[float]) -> str:
    if not vals:
        return ""
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.3f} +- {sd:.3f}"


def guided_table(runs: list[dict], steps: list[int]) -> list[str]:
    """Rows for the students whose summaries carry guided_* metrics (one row per model and w)."""
    guided = [label for label in runs[0]["students"] if any(k.startswith("guided_swd@") for k in runs[0]["students"][label])]
    if not guided:
        return []
    T = runs[0]["teacher"]["steps"]
    first = runs[0]["students"][guided[0]]
    scales = sorted({k.split("/")[1] for k in first if k.startswith("guided_swd@")}, key=lambda w: float(w[1:]))
    head = ("| model | w | " + " | ".join(f"SWD to CFG teacher@{T} @{k}" for k in steps) + " | "
            + " | ".join(f"class acc @{k}" for k in steps) + f" | net evals @{T} | sampling ms @{T} |")
    lines = [f"Guided samples (labels balanced over the classes; the same noise for every model; CFG teacher at {T} "
             f"steps: class accuracy " + ", ".join(f"{w} {statistics.mean(r['students'][guided[0]][f'guided_teacher_acc@{T}/{w}'] for r in runs):.3f}"
                                                   for w in scales) + ").", "", head, "|---|---|" + "---|" * (2 * len(steps) + 2)]
    for w in scales:
        ms = [r["students"][guided[0]] for r in runs]
        lines.append(f"| CFG teacher at k steps | {w[1:]} | " + " | ".join(fmt([m[f"guided_teacher_swd@{k}/{w}"] for m in ms]) for k in steps)
                     + " | " + " | ".join(fmt([m[f"guided_teacher_acc@{k}/{w}"] for m in ms]) for k in steps)
                     + f" | {2 * T} | {statistics.mean(m[f'guided_teacher_ms@{T}/{w}'] for m in ms):.0f} |")
        for label in guided:
            ms = [r["students"][label] for r in runs]
            lines.append(f"| {label} | {w[1:]} | " + " | ".join(fmt([m[f"guided_swd@{k}/{w}"] for m in ms]) for k in steps)
                         + " | " + " | ".join(fmt([m[f"guided_acc@{k}/{w}"] for m in ms]) for k in steps)
                         + f" | {T} | {statistics.mean(m[f'guided_ms@{T}/{w}'] for m in ms):.0f} |")
    return lines + [""]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="recipes/diffusion/toy_flow.yaml")
    ap.add_argument("--toys", nargs="+", default=["moons", "8gaussians", "checkerboard"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--out", default="runs/bench/diffusion")
    ap.add_argument("--report-only", action="store_true", help="rewrite results.md from results.json")
    ap.add_argument("--set", dest="overrides", nargs="*", default=[], help="recipe overrides, e.g. train.max_steps=300")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from distill.config import load_config
    from distill.registry import runners

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = json.loads((out / "results.json").read_text()) if args.report_only else {}
    t_start = time.perf_counter()
    for toy in [] if args.report_only else args.toys:
        for seed in args.seeds:
            cfg = load_config(args.recipe, [f"data.params.name={toy}", f"seed={seed}", f"cache_dir={out / 'cache'}",
                                            *args.overrides])
            t0 = time.perf_counter()
            s = runners["diffusion"](cfg, run_dir=None, log=lambda m: print(f"[{toy} s{seed}] {m}", flush=True))
            print(f"[{toy} s{seed}] {time.perf_counter() - t0:.0f}s", flush=True)
            results.setdefault(toy, []).append(s)
            (out / "results.json").write_text(json.dumps(results, indent=1))
    steps = sorted(int(k.split("@")[1]) for k in next(iter(results.values()))[0]["teacher"] if k.startswith("swd@"))
    n_samples = 2000
    lines = [f"Recipe `{args.recipe}` {' '.join(args.overrides)}; seeds per toy: {[len(r) for r in results.values()]}.", ""]
    for toy, runs in results.items():
        t = runs[0]["teacher"]
        lines += [f"### {toy}", "",
                  f"Teacher at {t['steps']} steps: SWD to data {t['swd']:.3f}, MMD {t['mmd']:.4f}, "
                  f"straightness {t['straightness']:.3f}, sampling {t['sample_ms']:.1f} ms for {n_samples} points.",
                  "",
                  "| model | " + " | ".join(f"SWD data @{k}" for k in steps) + " | "
                  + " | ".join(f"SWD teacher @{k}" for k in steps) + " | straightness @4 | train s |",
                  "|---|" + "---|" * (2 * len(steps) + 2)]
        lines.append("| teacher at k steps | " + " | ".join(f"{t[f'swd@{k}']:.3f}" for k in steps) + " | "
                     + " | ".join(f"{t[f'swd_teacher@{k}']:.3f}" for k in steps) + " | | |")
        for label in runs[0]["students"]:
            ms = [r["students"][label] for r in runs]
            st = [m[f"straightness@4"] for m in ms if "straightness@4" in m]
            lines.append(f"| {label} | " + " | ".join(fmt([m[f"swd@{k}"] for m in ms]) for k in steps) + " | "
                         + " | ".join(fmt([m[f"swd_teacher@{k}"] for m in ms]) for k in steps) + f" | {fmt(st)} | "
                         f"{statistics.mean(m['train_s'] for m in ms):.0f} |")
        lines.append("")
        lines += guided_table(runs, steps)
    (out / "results.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
