"""The diffusion run's report.md: a table of every model at every step count, and sample plots."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from distill.report.tables import human_count, markdown_table
from distill.utils import atomic_write_text


def rows(summary: dict[str, Any], steps: list[int]) -> list[list[str]]:
    t = summary["teacher"]
    fmt = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
    out = [[f"teacher ({t['steps']} steps)", str(t["steps"]), fmt(t["swd"]), fmt(t["mmd"]), "0", fmt(t.get("straightness")),
            f"{t['sample_ms']:.1f}", human_count(t["params"])]]
    for k in steps:
        out.append([f"teacher at {k}", str(k), fmt(t[f"swd@{k}"]), fmt(t[f"mmd@{k}"]), fmt(t[f"swd_teacher@{k}"]), "",
                    f"{t[f'sample_ms@{k}']:.1f}", human_count(t["params"])])
    for label, m in summary["students"].items():
        for k in steps:
            out.append([label, str(k), fmt(m[f"swd@{k}"]), fmt(m[f"mmd@{k}"]), fmt(m[f"swd_teacher@{k}"]),
                        fmt(m.get(f"straightness@{k}")), f"{m[f'sample_ms@{k}']:.1f}", human_count(m["params"])])
    return out


HEADERS = ["model", "steps", "SWD to data", "MMD to data", "SWD to teacher", "straightness", "sampling ms", "params"]


def guided_rows(summary: dict[str, Any], steps: list[int]) -> list[list[str]]:
    """Rows of the guided samples (methods whose evaluate gives guided_* metrics): model, w, steps, SWD, accuracy, ms."""
    out = []
    for label, m in summary["students"].items():
        scales = sorted({k.split("/")[1] for k in m if k.startswith("guided_swd@")}, key=lambda w: float(w[1:]))
        for w in scales:  # the teacher's rows as that method measured them (same noise and labels)
            out += [[f"CFG teacher ({label})", w[1:], str(k), f"{m[f'guided_teacher_swd@{k}/{w}']:.4f}",
                     f"{m[f'guided_teacher_acc@{k}/{w}']:.3f}", str(2 * k), f"{m[f'guided_teacher_ms@{k}/{w}']:.1f}"]
                    for k in steps]
            out += [[label, w[1:], str(k), f"{m[f'guided_swd@{k}/{w}']:.4f}", f"{m[f'guided_acc@{k}/{w}']:.3f}", str(k),
                     f"{m[f'guided_ms@{k}/{w}']:.1f}"] for k in steps]
    return out


GUIDED_HEADERS = ["model", "w", "steps", "SWD to CFG teacher (full steps)", "class accuracy", "net evals", "sampling ms"]


def plot_samples(path: Path, samples: dict[str, Tensor]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(samples)
    cols = min(n, 6)
    nrows = (n + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(2.2 * cols, 2.2 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (name, x) in zip(axes.flat, samples.items()):
        x = x[:1000].reshape(-1, x.shape[-1])
        ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.5)
        ax.set_xlim(-3, 3)
        ax.set_ylim(-3, 3)
        ax.set_title(name, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_report(run_dir: Path, cfg, summary: dict[str, Any], samples: dict[str, Tensor]) -> None:
    steps = list(cfg.eval.steps)
    lines = [f"# {cfg.name}: {summary['data']}, {cfg.teacher.process} teacher ({cfg.teacher.param}) "
             f"at {cfg.teacher.steps} steps", "",
             "Sliced Wasserstein distance (SWD) and MMD to fresh data; SWD to the teacher's full-step samples "
             "from the same noise. Lower is better. Straightness: 0 for straight, constant-speed paths.", "",
             markdown_table(HEADERS, rows(summary, steps)), ""]
    guided = guided_rows(summary, steps)
    if guided:
        lines += ["Guided samples (labels balanced over the classes, the same noise): SWD to the classifier-free "
                  f"guided teacher at {summary['teacher']['steps']} steps and the same w; class accuracy of the samples "
                  "(nearest labelled data point).", "", markdown_table(GUIDED_HEADERS, guided), ""]
    if next(iter(samples.values())).shape[-1] == 2:
        plot_samples(run_dir / "samples.png", samples)
        lines += ["![samples](samples.png)", ""]
    atomic_write_text(run_dir / "report.md", "\n".join(lines))
