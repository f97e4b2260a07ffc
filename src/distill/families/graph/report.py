"""The graph run's table, report.md and plots (learning curves, teacher vs students)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from distill.report.tables import human_count, markdown_table
from distill.utils import atomic_write_text


def headers(results: dict[str, Any]) -> list[str]:
    h = ["model", "role", "test accuracy %", "val accuracy %"]
    if results["data"]["setting"] == "inductive":
        h += ["tran %", "ind %"]
    return h + ["best epoch", "params"]


def result_rows(results: dict[str, Any]) -> list[list[str]]:
    rows = []
    entries = [(results["teacher"]["model"], "teacher (GNN)", results["teacher"])]
    entries += [(k, f"student ({v['method']})", v) for k, v in results["students"].items()]
    for name, role, m in entries:
        row = [name, role, f"{m['accuracy']:.2f}", f"{m['val_accuracy']:.2f}"]
        if "accuracy_ind" in m:
            row += [f"{m['accuracy_tran']:.2f}", f"{m['accuracy_ind']:.2f}"]
        rows.append(row + [str(m["best_epoch"]), human_count(m["params"])])
    return rows


def _plots(run_dir: Path, results: dict[str, Any], histories: dict[str, list]) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = run_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, hist in histories.items():
        if hist:
            ax.plot([h["epoch"] for h in hist], [h["val_accuracy"] for h in hist], label=label,
                    ls="--" if label == "teacher" else "-")
    ax.set_xlabel("epoch"), ax.set_ylabel("validation accuracy (%)"), ax.set_title("Learning curves")
    ax.legend(), ax.grid(alpha=0.3)
    fig.tight_layout(), fig.savefig(out / "learning_curves.png", dpi=110), plt.close(fig)

    names = ["teacher", *results["students"]]
    accs = [results["teacher"]["accuracy"]] + [v["accuracy"] for v in results["students"].values()]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bars = ax.bar(names, accs, color=["#555"] + ["#3b7dd8"] * (len(names) - 1))
    ax.bar_label(bars, fmt="%.1f")
    ax.set_ylim(max(0.0, min(accs) - 10), 100), ax.set_ylabel("test accuracy (%)")
    ax.set_title("GNN teacher vs MLP students")
    fig.tight_layout(), fig.savefig(out / "comparison.png", dpi=110), plt.close(fig)
    return [("Teacher vs students", "plots/comparison.png"), ("Learning curves", "plots/learning_curves.png")]


def write_report(run_dir: Path, cfg, results: dict[str, Any], histories: dict[str, list]) -> Path:
    plots = _plots(run_dir, results, histories)
    d = results["data"]
    lines = [
        f"# Run `{cfg.name}`", "",
        f"Family: graph. Data: `{d['name']}` ({d['nodes']} nodes, {d['edges']} edges, {d['classes']} classes), "
        f"{d['setting']} setting: {d['train']} labelled / {d['val']} validation / {d['test']} test nodes"
        + (f", plus {d['test_ind']} test nodes held out of the graph until test time" if d["test_ind"] else "") + ".",
        f"Teacher: `{cfg.teacher.model.name}` {cfg.teacher.model.params}. Student: `{cfg.student.model.name}` "
        f"{cfg.student.model.params}, same initialisation for every method, seed {cfg.seed}. "
        "Weights of the epoch with the best validation accuracy.", "",
        markdown_table(headers(results), result_rows(results)), "",
    ]
    if "latency" in results:
        lt = results["latency"]
        lines += [f"Inference per node, one CPU thread: GNN {lt['gnn_ms_per_node']:.3f} ms (fetching its "
                  f"neighbourhood included), MLP {lt['mlp_ms_per_node']:.4f} ms: {lt['speedup']:.0f}x faster.", ""]
    lines += [f"Best distilled student (by validation accuracy): `{results['best']}`, saved in `student/`.", ""]
    for title, path in plots:
        lines += [f"## {title}", "", f"![{title}]({path})", ""]
    path = run_dir / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
