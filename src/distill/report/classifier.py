"""The classifier run's table, report.md and plots (learning curves, comparison bars, reliability)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from distill.eval.metrics import reliability_bins
from distill.report.tables import human_bytes, human_count, markdown_table
from distill.utils import atomic_write_text

HEADERS = ["model", "role", "accuracy %", "NLL", "ECE %", "params", "size", "CPU latency / sample"]


def result_rows(results: dict[str, Any]) -> list[list[str]]:
    rows = []
    entries = [("teacher", "teacher", results["teacher"])]
    entries += [(k, "student", v) for k, v in results["students"].items()]
    for name, role, m in entries:
        rows.append([name, role, f"{m['accuracy']:.2f}", f"{m['nll']:.3f}", f"{m['ece']:.2f}",
                     human_count(m["params"]), human_bytes(m.get("size_bytes")), f"{m['latency_ms']:.3f} ms"])
    return rows


def print_table(results: dict[str, Any], title: str = "") -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title or None)
    for h in HEADERS:
        table.add_column(h, justify="left" if h in ("model", "role") else "right")
    for r in result_rows(results):
        table.add_row(*r)
    Console().print(table)


def _plots(run_dir: Path, results: dict[str, Any], histories: dict[str, list], logits: dict[str, torch.Tensor],
           labels: torch.Tensor) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = run_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    made = []

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, hist in histories.items():
        pts = [(h["epoch"], h["accuracy"]) for h in hist if "accuracy" in h]
        if pts:
            ax.plot(*zip(*pts), label=label)
    ax.axhline(results["teacher"]["accuracy"], color="k", ls="--", lw=1, label="teacher")
    ax.set_xlabel("epoch"), ax.set_ylabel("test accuracy (%)"), ax.set_title("Student learning curves")
    ax.legend(), ax.grid(alpha=0.3)
    fig.tight_layout(), fig.savefig(out / "learning_curves.png", dpi=110), plt.close(fig)
    made.append(("Learning curves", "plots/learning_curves.png"))

    names = ["teacher", *results["students"]]
    accs = [results["teacher"]["accuracy"]] + [v["accuracy"] for v in results["students"].values()]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bars = ax.bar(names, accs, color=["#555"] + ["#3b7dd8"] * (len(names) - 1))
    ax.bar_label(bars, fmt="%.1f")
    lo = max(0.0, min(accs) - 10)
    ax.set_ylim(lo, 100), ax.set_ylabel("test accuracy (%)"), ax.set_title("Teacher vs students")
    fig.tight_layout(), fig.savefig(out / "comparison.png", dpi=110), plt.close(fig)
    made.append(("Teacher vs students", "plots/comparison.png"))

    fig, axes = plt.subplots(1, len(logits), figsize=(3.2 * len(logits), 3.2), squeeze=False)
    for ax, (name, lg) in zip(axes[0], logits.items()):
        conf, acc, count = reliability_bins(lg.float().softmax(-1), labels)
        n = len(conf)
        centers = (torch.arange(n) + 0.5) / n
        keep = count > 0
        ax.bar(centers[keep], acc[keep], width=1 / n, edgecolor="k", alpha=0.7, label="accuracy")
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set_title(name), ax.set_xlabel("confidence"), ax.set_xlim(0, 1), ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("accuracy")
    fig.suptitle("Reliability diagrams (test set)")
    fig.tight_layout(), fig.savefig(out / "reliability.png", dpi=110), plt.close(fig)
    made.append(("Reliability diagrams", "plots/reliability.png"))
    return made


def write_report(run_dir: Path, cfg, results: dict[str, Any], histories: dict[str, list],
                 logits: dict[str, torch.Tensor], labels: torch.Tensor) -> Path:
    plots = _plots(run_dir, results, histories, logits, labels)
    d = results["data"]
    lines = [
        f"# Run `{cfg.name}`",
        "",
        f"Family: classifier. Data: `{d['name']}` ({d['train']} train, {d['test']} test, {d['classes']} classes; "
        f"the students saw labels for {100 * d['labeled_fraction']:.0f}% of the training images, "
        "the teacher saw all of them).",
        f"Teacher: `{cfg.teacher.model.name}` {cfg.teacher.model.params}. Student: `{cfg.student.model.name}` "
        f"{cfg.student.model.params}, trained {cfg.train.epochs} epochs per method from the same initialisation, seed {cfg.seed}.",
        "",
        markdown_table(HEADERS, result_rows(results)),
        "",
        f"Best distilled student: `{results['best']}`, chosen on {results.get('best_selected_on', 'test')} accuracy "
        "(saved in `student/`; load it with `distill.load_student('" + str(run_dir / "student") + "')`).",
        "Latency: median of single-sample forward passes on one CPU thread. Size: the safetensors file.",
        "",
    ]
    for title, path in plots:
        lines += [f"## {title}", "", f"![{title}]({path})", ""]
    path = run_dir / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
