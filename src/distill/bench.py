"""`distill bench SUITE.yaml`: a grid of recipes x methods x seeds, run through `distill.run`.

A suite names one or more recipes (a file, or an inline mapping, plus overrides), the methods and
the seeds. Every cell (recipe, method, seed) is one `distill.run` with overrides that set the seed
and a one-method list; its result is written to `cells/<cell>.json` as soon as it finishes, so an
interrupted bench resumes where it stopped (finished cells are skipped). A cell is reused only if
its fingerprint matches: the recipe, the overrides and the code that computed it (the package
version and, in a git checkout, the commit and any uncommitted change to the package's source), so
a table never mixes results of older code; a cell from other code is `stale` and runs again, and
results.md names the code of its cells. At the end:
`results.csv` (one row per cell), `results.md` (mean +- std over seeds of the last and the best
epoch, the differences to the baselines) and `results.png`.

It serves any family whose summary follows the convention
    {"primary_metric": "accuracy", "teacher": {...}, "students": {label: {"accuracy", "best_accuracy", ...}}}
(`best_<metric>` is optional). Baselines (default: `scratch` and `kd`) are always added to the grid.

    name: fmnist
    output_dir: runs/bench/fmnist
    seeds: [0, 1, 2]
    recipe: recipes/classifier/fmnist.yaml      # default recipe of every entry below
    overrides: ["train.epochs=3"]               # applied to every cell
    recipes:
      - {label: convnet16, overrides: ["student.model.params.width=16"]}
    methods:
      - {name: dkd, params: {beta: 8.0}}
      - {name: at, params: {...}, only: [convnet16]}          # only some recipes
      - {name: ofa, params_by_recipe: {mlp64: {student_layers: [features.1]}}}
"""
from __future__ import annotations

import csv
import functools
import hashlib
import json
import math
import os
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from distill.config import read_yaml
from distill.errors import ConfigError
from distill.utils import atomic_write_text

DEFAULT_BASELINES = [{"name": "scratch"}, {"name": "kd"}]


@dataclass
class Method:
    name: str
    label: str
    params: dict[str, Any] = field(default_factory=dict)
    only: list[str] | None = None
    params_by_recipe: dict[str, dict[str, Any]] = field(default_factory=dict)
    train: dict[str, Any] | None = None  # the method's own `train` section, where the family has one

    def entry(self, recipe: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "params": {**self.params, **self.params_by_recipe.get(recipe, {})}}
        if self.label != self.name:
            out["label"] = self.label
        if self.train is not None:
            out["train"] = self.train
        return out


@dataclass
class Recipe:
    label: str
    source: str | dict
    overrides: list[str]


@dataclass
class Cell:
    recipe: Recipe
    method: Method
    seed: int

    @property
    def key(self) -> str:
        return f"{self.recipe.label}__{self.method.label}__s{self.seed}"


@dataclass
class Suite:
    name: str
    path: Path
    output_dir: Path
    seeds: list[int]
    recipes: list[Recipe]
    methods: list[Method]
    overrides: list[str]
    seed_key: str = "seed"
    method_key: str = "methods"
    estimate_s_per_cell: float = 60.0
    baselines: list[str] = field(default_factory=list)

    def cells(self) -> list[Cell]:
        return [Cell(r, m, s) for r in self.recipes for m in self.methods
                if m.only is None or r.label in m.only for s in self.seeds]


def _method(d: dict[str, Any], where: str) -> Method:
    if not isinstance(d, dict) or "name" not in d:
        raise ConfigError(f"{where}: expected a mapping with a `name` (given: {d!r}).")
    unknown = set(d) - {"name", "label", "params", "only", "params_by_recipe", "train"}
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; allowed: name, label, params, only, "
                          "params_by_recipe, train.")
    return Method(d["name"], d.get("label") or d["name"], dict(d.get("params") or {}), d.get("only"),
                  dict(d.get("params_by_recipe") or {}), d.get("train"))


def load_suite(path: str | os.PathLike, output_dir: str | None = None) -> Suite:
    """Read and check a suite file (recipe paths are relative to the current folder, then the suite's)."""
    path = Path(path)
    data = read_yaml(path)
    allowed = {"name", "output_dir", "seeds", "recipe", "recipes", "methods", "overrides", "baselines",
               "seed_key", "method_key", "estimate_s_per_cell", "description"}
    unknown = set(data) - allowed
    if unknown:
        raise ConfigError(f"suite {path}: unknown keys {sorted(unknown)}; allowed: {', '.join(sorted(allowed))}.")

    def resolve(src):
        if isinstance(src, dict):
            return src
        if src is None:
            raise ConfigError(f"suite {path}: a recipe entry has no `recipe` and the suite has no default `recipe`.")
        p = Path(src)
        return str(p if p.is_file() else path.parent / p)

    default = data.get("recipe")
    entries = data.get("recipes") or [{"label": "recipe"}]
    recipes = []
    for i, r in enumerate(entries):
        if "label" not in r:
            raise ConfigError(f"suite {path}: recipes.{i} needs a `label`.")
        recipes.append(Recipe(r["label"], resolve(r.get("recipe", default)), list(r.get("overrides") or [])))
    base = [_method(b if isinstance(b, dict) else {"name": b}, "baselines")
            for b in data.get("baselines", DEFAULT_BASELINES)]
    methods = [_method(m, f"methods.{i}") for i, m in enumerate(data.get("methods") or [])]
    labels = {m.label for m in methods}
    methods = [b for b in base if b.label not in labels] + methods  # baselines first, always present
    seen: set[str] = set()
    for m in methods:
        if m.label in seen:
            raise ConfigError(f"suite {path}: two methods are labelled {m.label!r}; give one a `label`.")
        seen.add(m.label)
    seeds = data.get("seeds", [0])
    if not seeds or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"suite {path}: `seeds` must be a non-empty list of integers.")
    name = data.get("name", path.stem)
    return Suite(name=name, path=path, output_dir=Path(output_dir or data.get("output_dir", f"runs/bench/{name}")),
                 seeds=list(seeds), recipes=recipes, methods=methods, overrides=list(data.get("overrides") or []),
                 seed_key=data.get("seed_key", "seed"), method_key=data.get("method_key", "methods"),
                 estimate_s_per_cell=float(data.get("estimate_s_per_cell", 60.0)), baselines=[b.label for b in base])


def cell_overrides(suite: Suite, cell: Cell) -> list[str]:
    return [*suite.overrides, *cell.recipe.overrides, f"{suite.seed_key}={cell.seed}",
            f"name={cell.key}", f"output_dir={suite.output_dir / 'runs'}",
            f"{suite.method_key}={json.dumps([cell.method.entry(cell.recipe.label)])}"]


def cell_path(suite: Suite, cell: Cell) -> Path:
    return suite.output_dir / "cells" / f"{cell.key}.json"


def git_state(path: str | os.PathLike) -> dict[str, Any] | None:
    """The git state of the source under `path`: {"commit": HEAD, "dirty": uncommitted changes to
    files under `path` (tracked or untracked, not ignored)} plus, when dirty, "diff": a hash of those
    changes (two different edits of one commit are different code). None when git is missing or
    `path` holds no tracked file (not a checkout, or an installed copy inside an ignored folder)."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(path), *args], capture_output=True, timeout=60)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0 or not git("ls-files", "--", ".").stdout.strip():
            return None
        changed = git("diff", "HEAD", "--binary", "--", ".").stdout
        untracked = sorted(git("ls-files", "--others", "--exclude-standard", "-z", "--", ".").stdout.split(b"\0"))
    except (OSError, subprocess.SubprocessError):
        return None
    out: dict[str, Any] = {"commit": head.stdout.decode().strip(), "dirty": bool(changed or any(untracked))}
    if out["dirty"]:
        h = hashlib.sha256(changed)
        for rel in filter(None, untracked):  # paths relative to `path`
            f = Path(path) / rel.decode()
            h.update(rel + b"\0" + (f.read_bytes() if f.is_file() else b""))
        out["diff"] = h.hexdigest()[:16]
    return out


@functools.lru_cache(maxsize=None)
def package_git_state() -> dict[str, Any] | None:
    """`git_state` of the installed `distill` package, read once per process (the code it runs)."""
    return git_state(Path(__file__).resolve().parent)


def code_identity() -> dict[str, Any]:
    """The code a cell is computed with: {"version"} and, in a git checkout, "commit", "dirty"
    (and "diff" when dirty) of the package's source."""
    import distill

    return {"version": distill.__version__, **(package_git_state() or {})}


def code_label(code: dict[str, Any] | None) -> str:
    """'distill 0.1.0, commit 0123456789ab (+ uncommitted changes 5f3a...)' for tables and logs."""
    if not code:
        return "unknown code (a cell from before code was recorded)"
    text = f"distill {code.get('version')}"
    if code.get("commit"):
        text += f", commit {code['commit'][:12]}"
        if code.get("dirty"):
            text += f" + uncommitted changes {code.get('diff', '')}".rstrip()
    return text


def cell_fingerprint(suite: Suite, cell: Cell) -> str:
    """What a finished cell was computed from: the recipe (file contents or mapping), every
    override and the code (`code_identity`). A cell file with another fingerprint is stale: the
    suite or the code changed since it ran."""
    src = cell.recipe.source
    if isinstance(src, dict):
        recipe = json.dumps(src, sort_keys=True, default=str)
    else:
        p = Path(src)
        recipe = p.read_text() if p.is_file() else str(src)
    blob = json.dumps([recipe, cell_overrides(suite, cell), code_identity()], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_cells(suite: Suite, stale: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Finished cells whose fingerprint matches the suite and the code as they are now; the keys of
    cells computed from another recipe, other overrides or other code are appended to `stale`
    (they will run again)."""
    out = {}
    for cell in suite.cells():
        p = cell_path(suite, cell)
        if p.is_file():
            rec = json.loads(p.read_text())
            if rec.get("fingerprint") == cell_fingerprint(suite, cell):
                out[cell.key] = rec
            elif stale is not None:
                stale.append(cell.key)
    return out


def estimate_seconds(suite: Suite, done: dict[str, dict[str, Any]]) -> tuple[int, float]:
    """(cells left, estimated seconds): mean wall time of finished cells of the same recipe and
    method, else of the recipe, else the suite's `estimate_s_per_cell`."""
    left = [c for c in suite.cells() if c.key not in done]
    walls: dict[tuple[str, str], list[float]] = {}
    for r in done.values():
        walls.setdefault((r["recipe"], r["method"]), []).append(r["wall_s"])
        walls.setdefault((r["recipe"], "*"), []).append(r["wall_s"])
    total = 0.0
    for c in left:
        w = walls.get((c.recipe.label, c.method.label)) or walls.get((c.recipe.label, "*"))
        total += statistics.mean(w) if w else suite.estimate_s_per_cell
    return len(left), total


def run_cell(suite: Suite, cell: Cell, log: Callable[[str], None]) -> dict[str, Any]:
    from distill.api import run as run_recipe

    t0 = time.perf_counter()
    summary = run_recipe(cell.recipe.source, cell_overrides(suite, cell), overwrite=True,
                         log=lambda m: None, show_table=False)
    wall = time.perf_counter() - t0
    pm = summary.get("primary_metric", "accuracy")
    students = summary.get("students") or {}
    if cell.method.label not in students:
        if len(students) != 1:
            raise ConfigError(f"bench: the run of {cell.key} reported students {list(students)}, not {cell.method.label!r}.")
        metrics = next(iter(students.values()))
    else:
        metrics = students[cell.method.label]
    teacher = summary.get("teacher") or {}
    rec = {"recipe": cell.recipe.label, "method": cell.method.label, "method_name": cell.method.name,
           "seed": cell.seed, "primary_metric": pm, "higher_is_better": bool(summary.get("higher_is_better", True)),
           "last": metrics[pm], "best": metrics.get(f"best_{pm}", metrics[pm]),
           "teacher": teacher.get(pm), "wall_s": round(wall, 2), "run_dir": summary.get("run_dir"),
           "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
           "fingerprint": cell_fingerprint(suite, cell), "code": code_identity()}
    atomic_write_text(cell_path(suite, cell), json.dumps(rec, indent=2))
    return rec


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' (1 <= I <= N) -> (I - 1, N); a clear error otherwise."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        i = n = 0
    if not 1 <= i <= n:
        raise ConfigError(f"--shard {text!r}: give I/N with 1 <= I <= N, e.g. --shard 1/2 and --shard 2/2 "
                          "in two processes that share the output folder.")
    return i - 1, n


def run_suite(suite: Suite, *, log: Callable[[str], None] = print, rerun: bool = False,
              command: str = "", shard: tuple[int, int] | None = None) -> dict[str, Any]:
    """Run every unfinished cell, then write results.csv, results.md and results.png.

    `shard=(i, n)` runs only the cells whose grid index is i modulo n, so n processes (or machines
    sharing the folder) split one grid; each writes the tables from every cell finished so far,
    so the last one to finish writes the whole grid."""
    suite.output_dir.mkdir(parents=True, exist_ok=True)
    stale: list[str] = []
    done = {} if rerun else load_cells(suite, stale)
    if stale:
        log(f"{len(stale)} finished cell(s) were computed from another version of this suite's recipe, "
            f"overrides or code and run again (e.g. {stale[0]}; this code: {code_label(code_identity())})")
    cells = suite.cells()
    t_start = time.perf_counter()
    for i, cell in enumerate(cells):
        if cell.key in done or (shard is not None and i % shard[1] != shard[0]):
            continue
        n_left, eta = estimate_seconds(suite, done)
        if shard is not None:
            n_left, eta = -(-n_left // shard[1]), eta / shard[1]
        log(f"[{i + 1}/{len(cells)}] {cell.key} (about {human_time(eta)} left for {n_left} cells)")
        done[cell.key] = run_cell(suite, cell, log)
        r = done[cell.key]
        log(f"    {r['primary_metric']} last {r['last']:.2f}, best {r['best']:.2f} ({r['wall_s']:.1f}s)")
    if shard is not None:  # the other shards' cells finished meanwhile
        done = {**load_cells(suite, []), **done}
    results = [done[c.key] for c in cells if c.key in done]
    write_outputs(suite, results, command=command, session_s=time.perf_counter() - t_start)
    return {"cells": results, "output_dir": str(suite.output_dir)}


def human_time(s: float) -> str:
    return f"{s / 60:.1f} min" if s >= 90 else f"{s:.0f} s"


def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(suite: Suite, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (recipe, method): mean and std over seeds of last/best, and mean wall time."""
    rows = []
    for r in suite.recipes:
        for m in suite.methods:
            cells = [x for x in results if x["recipe"] == r.label and x["method"] == m.label]
            if not cells:
                continue
            last, best = mean_std([c["last"] for c in cells]), mean_std([c["best"] for c in cells])
            teacher = [c["teacher"] for c in cells if c.get("teacher") is not None]
            rows.append({"recipe": r.label, "method": m.label, "n": len(cells), "last_mean": last[0], "last_std": last[1],
                         "best_mean": best[0], "best_std": best[1], "wall_s": statistics.mean(c["wall_s"] for c in cells),
                         "teacher": statistics.mean(teacher) if teacher else None,
                         "primary_metric": cells[0]["primary_metric"],
                         "higher_is_better": cells[0].get("higher_is_better", True)})
    return rows


def write_outputs(suite: Suite, results: list[dict[str, Any]], *, command: str = "", session_s: float = 0.0) -> None:
    out = suite.output_dir
    metric_keys = sorted({k for r in results for k in r.get("metrics", {})})
    lines = []
    with open(out / "results.csv.tmp", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["recipe", "method", "method_name", "seed", "primary_metric", "last", "best", "teacher", "wall_s",
                    *metric_keys])
        for r in results:
            w.writerow([r["recipe"], r["method"], r["method_name"], r["seed"], r["primary_metric"], r["last"], r["best"],
                        r.get("teacher"), r["wall_s"], *[r.get("metrics", {}).get(k) for k in metric_keys]])
    os.replace(out / "results.csv.tmp", out / "results.csv")

    rows = aggregate(suite, results)
    total_wall = sum(r["wall_s"] for r in results)
    lines += [f"# {suite.name}", ""]
    if command:
        lines += ["Command:", "", "```", command, "```", ""]
    lines += [f"Seeds: {suite.seeds}. Cells: {len(results)} of {len(suite.cells())}. "
              f"Sum of cell wall times: {human_time(total_wall)}.", ""]
    codes = sorted({code_label(r.get("code")) for r in results})
    if len(codes) == 1:
        lines += [f"Code: {codes[0]}.", ""]
    elif codes:  # only where cells were merged by hand: run_suite keeps the cells of this code
        lines += [f"Code: the cells come from {len(codes)} versions of the code: {'; '.join(codes)}.", ""]
    for r in suite.recipes:
        rr = [x for x in rows if x["recipe"] == r.label]
        if not rr:
            continue
        pm = rr[0]["primary_metric"]
        base = {x["method"]: x["last_mean"] for x in rr}
        t = rr[0]["teacher"]
        lines += [f"## {r.label}", "", f"Teacher {pm}: {t:.2f}" if t is not None else "", "",
                  f"| method | seeds | {pm} last (mean +- std) | {pm} best epoch (mean +- std) | "
                  + " | ".join(f"vs {b}" for b in suite.baselines) + " | s / run |",
                  "|---|---|---|---|" + "---|" * len(suite.baselines) + "---|"]
        sign = -1 if rr[0].get("higher_is_better", True) else 1  # best first
        if sign == 1:
            lines[-2] = lines[-2].replace(f"| {pm} last", f"| {pm} last (lower is better)")
        for x in sorted(rr, key=lambda x: (x["method"] not in suite.baselines, sign * x["last_mean"])):
            deltas = [f"{x['last_mean'] - base[b]:+.2f}" if b in base else "" for b in suite.baselines]
            lines.append(f"| {x['method']} | {x['n']} | {x['last_mean']:.2f} +- {x['last_std']:.2f} | "
                         f"{x['best_mean']:.2f} +- {x['best_std']:.2f} | " + " | ".join(deltas) + f" | {x['wall_s']:.1f} |")
        lines.append("")
    lines += ["![results](results.png)", ""]
    atomic_write_text(out / "results.md", "\n".join(lines))
    if rows:
        plot(suite, rows, out / "results.png")


def plot(suite: Suite, rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recipes = [r.label for r in suite.recipes if any(x["recipe"] == r.label for x in rows)]
    fig, axes = plt.subplots(len(recipes), 1, figsize=(max(6, 0.45 * len(suite.methods) + 2), 3.2 * len(recipes)),
                             squeeze=False)
    for ax, rec in zip(axes[:, 0], recipes):
        sign = -1 if next(x for x in rows if x["recipe"] == rec).get("higher_is_better", True) else 1
        rr = sorted([x for x in rows if x["recipe"] == rec], key=lambda x: sign * x["last_mean"])
        names = [x["method"] for x in rr]
        colors = ["tab:gray" if n in suite.baselines else "tab:blue" for n in names]
        ax.bar(names, [x["last_mean"] for x in rr], yerr=[x["last_std"] for x in rr], color=colors, capsize=3)
        ax.scatter(names, [x["best_mean"] for x in rr], color="k", marker="_", s=120, label="best epoch", zorder=3)
        lo = min(x["last_mean"] - x["last_std"] for x in rr)
        hi = max([x["best_mean"] for x in rr] + [x["teacher"] or -math.inf for x in rr])
        ax.set_ylim(lo - 0.15 * (hi - lo + 1e-6), hi + 0.1 * (hi - lo + 1e-6))
        if rr[0]["teacher"] is not None:
            ax.axhline(rr[0]["teacher"], color="k", ls="--", lw=1, label="teacher")
        ax.set_title(f"{suite.name}: {rec} (mean +- std over {len(suite.seeds)} seeds)")
        ax.set_ylabel(rr[0]["primary_metric"])
        ax.tick_params(axis="x", rotation=60)
        ax.legend(loc="lower right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def dry_run_text(suite: Suite) -> str:
    stale: list[str] = []
    done = load_cells(suite, stale)
    lines = [f"suite {suite.name}: {len(suite.recipes)} recipe(s) x {len(suite.methods)} method(s) x "
             f"{len(suite.seeds)} seed(s) = {len(suite.cells())} cells -> {suite.output_dir}"]
    for c in suite.cells():
        state = "done" if c.key in done else "stale" if c.key in stale else "todo"
        lines.append(f"  [{state}] {c.key}: {' '.join(cell_overrides(suite, c)[-1:])}")
    n, s = estimate_seconds(suite, done)
    lines.append(f"{n} cells to run, estimated {human_time(s)}")
    return "\n".join(lines)


def dump_suite(suite: Suite) -> str:
    return yaml.safe_dump({"name": suite.name, "seeds": suite.seeds,
                           "methods": [m.entry() for m in suite.methods]}, sort_keys=False)
