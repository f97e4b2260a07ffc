"""The dataset run's report.md: the results table (beside random real and full data, soft labels
flagged), the protocol card, accuracy vs iterations, and a grid image of every synthetic set."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from distill.families.dataset.base import SyntheticSet
from distill.report.tables import markdown_table
from distill.utils import atomic_write_text


def result_rows(results: dict[str, Any]) -> list[list[str]]:
    fmt = lambda m: f"{m['accuracy']:.2f} +- {m['accuracy_std']:.2f}"  # noqa: E731
    rows = []
    if results.get("teacher"):
        rows.append(["full data", "-", fmt(results["teacher"]), "", "", ""])
    for k, m in results.get("baselines", {}).items():
        rows.append([k + (" (no augmentation)" if k.endswith("noaug") else ""), "no", fmt(m), "", "", ""])
    for k, m in results["students"].items():
        kd = f"{m['kd_random_real']:.2f}" if "kd_random_real" in m else ""
        vs = f"{m['vs_random_real']:+.2f}" if "vs_random_real" in m else ""
        rows.append([k, "yes" if m["soft_labels"] else "no", fmt(m), vs, kd, f"{m['distill_s']:.1f}"])
    return rows


HEADERS = ["set", "soft labels", "accuracy % (mean +- std)", "vs random real", "KD on random real (same teacher)",
           "distil s"]


def save_grid(s: SyntheticSet, mean: list[float], std: list[float], path: Path, max_per_class: int = 10) -> None:
    """One row per class, up to `max_per_class` images, de-normalised to [0, 1]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = s.images.detach().cpu() * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
    x = x.clamp(0, 1)
    y = s.labels.argmax(-1) if s.soft else s.labels
    classes = sorted(set(y.tolist()))
    cols = min(max_per_class, max(int((y == c).sum()) for c in classes))
    fig, axes = plt.subplots(len(classes), cols, figsize=(cols * 0.8, len(classes) * 0.8), squeeze=False)
    for r, c in enumerate(classes):
        imgs = x[y == c][:cols]
        for j in range(cols):
            ax = axes[r][j]
            ax.axis("off")
            if j < len(imgs):
                img = imgs[j].permute(1, 2, 0).numpy()
                ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
    fig.tight_layout(pad=0.1)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_report(run_dir: Path, cfg, results: dict[str, Any], grids: dict[str, SyntheticSet], data: dict) -> Path:
    lines = [f"# {cfg.name}: data-set distillation on {data['name']}, IPC {cfg.ipc}", "",
             markdown_table(HEADERS, result_rows(results)), "",
             "Accuracy: mean +- std over synthetic sets x fresh evaluation networks. Soft-label sets are compared "
             "with KD from the same teacher on random real images: a gain there is a gain from labels, not images.",
             "", "## Protocol card", ""]
    lines += [f"- {k}: {v}" for k, v in results["card"].items()]
    curves = {k: m["curve"] for k, m in results["students"].items() if len(m.get("curve", [])) > 1}
    if curves:
        lines += ["", "## Accuracy vs iterations (1 evaluation network each)", ""]
        for k, c in curves.items():
            lines.append(f"- {k}: " + ", ".join(f"{e['iteration']}: {e['accuracy']:.1f}" for e in c))
    lines += ["", "## Synthetic sets", ""]
    for label, s in grids.items():
        save_grid(s, data["mean"], data["std"], run_dir / "plots" / f"{label}.png")
        lines += [f"### {label}", "", f"![{label}](plots/{label}.png)", ""]
    out = run_dir / "report.md"
    atomic_write_text(out, "\n".join(lines) + "\n")
    return out
