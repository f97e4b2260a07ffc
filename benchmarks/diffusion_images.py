"""Image path of the diffusion family: a class-conditional UNet teacher (flow matching, label
dropout for classifier-free guidance) on digits 16x16 (or Fashion-MNIST 28x28, `--data fmnist`),
one distilled student per method and seed, scored by a Frechet distance in the features of a
classifier trained here (NOT comparable to published FID) and by that classifier's accuracy on the
generated samples' classes, with sampling wall time (and its ratio to the teacher's full-step
sampling) and training time. Writes report.md, summary.json and grid.png under --out, after every
model (a run cut short keeps what it measured).

    .venv/bin/python benchmarks/diffusion_images.py --out runs/digits_unet
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from distill.eval.frechet import ImageScorer, train_feature_classifier
from distill.families.diffusion.base import DiffusionContext
from distill.families.diffusion.images import digits_images, fashion_mnist_images
from distill.families.diffusion.process import Process, ddim_sample
from distill.families.diffusion.unet import UNetDenoiser, conditioning, guidance, load_unet, make_unet
from distill.registry import methods
from distill.teacher import Teacher

PROCESS = Process("flow")
STEPS = (1, 2, 4)


def train_teacher(src, steps: int, widths, batch: int, lr: float, p_uncond: float = 0.1) -> UNetDenoiser:
    torch.manual_seed(0)
    net = UNetDenoiser(make_unet(src.dim[0], src.dim[-1], tuple(widths), num_classes=src.num_classes))
    opt = torch.optim.AdamW(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(1)
    for i in range(steps):
        x0, y = src.sample_labeled(batch, g)
        y = torch.where(torch.rand(batch, generator=g) < p_uncond, torch.full_like(y, src.num_classes), y)
        z = torch.randn(x0.shape, generator=g)
        t = 1e-3 + (1 - 1e-3) * torch.rand(batch, generator=g)
        with conditioning(y):
            loss = ((net(PROCESS.noisy(x0, z, t), t) - (z - x0)) ** 2).flatten(1).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if i % 200 == 0:
            print(f"teacher step {i}: loss {loss.item():.2f}", flush=True)
    return net.eval()


def distil(name: str, teacher: Teacher, src, steps: int, batch: int, lr: float, params: dict, w: float,
           full: int, seed: int):
    """One student by `name`, from the guided teacher (scale w), class-conditional: every batch carries
    the labels of its data draw ("y"), as the runner's batches do."""
    torch.manual_seed(seed)
    student = UNetDenoiser(make_unet(src.dim[0], src.dim[-1], tuple(teacher.module.unet.config.block_out_channels),
                                     num_classes=src.num_classes))
    ctx = DiffusionContext(PROCESS, "velocity", "velocity", full, 1, total_steps=steps, seed=seed)
    method = methods.get(name, "diffusion").builder(student, teacher, ctx, **params)
    opt = torch.optim.Adam(method.trainable_parameters(), lr=lr)
    g = torch.Generator().manual_seed(1000 + seed)
    method.train()
    for i in range(steps):
        x0, y = src.sample_labeled(batch, g)
        with guidance(teacher, w):    # the student learns the guided teacher; labels and step in the batch
            terms = method({"x0": x0, "z": torch.randn(x0.shape, generator=g), "y": y, "step": i})
        loss = sum(method.weights.get(k, 1.0) * v for k, v in terms.items())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i % 100 == 0:
            print(f"{name} seed {seed} step {i}: loss {loss.item():.3f}", flush=True)
    method.finalize()
    return method.eval()


def grid_png(rows: dict[str, torch.Tensor], path: Path, per_row: int = 20) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 1, figsize=(per_row * 0.4, len(rows) * 0.62))
    for ax, (label, x) in zip(axes if len(rows) > 1 else [axes], rows.items()):
        strip = torch.cat(list(x[:per_row, 0].clamp(-1, 1)), dim=1)         # (S, per_row * S)
        ax.imshow(strip.numpy(), cmap="gray", vmin=-1, vmax=1)
        ax.set_axis_off()
        ax.set_title(label, fontsize=7, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def fmt(vals: list[float], digits: int) -> str:
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.mean(vals):.{digits}f} +- {statistics.stdev(vals):.{digits}f}"


def write_report(out: Path, summary: dict, a) -> None:
    res, ref = summary["results"], summary.get("teacher_full_label")
    ref_s = res[ref]["sample_s"][0] if ref in res else None
    seeds = max((len(r["fd"]) for r in res.values()), default=1)
    lines = [f"# {summary['data']}, class-conditional UNet, guidance w={a.guidance}", "",
             "fd = Frechet distance in the penultimate features of a small classifier trained here on the same",
             "data; it is NOT comparable to published FID. class_acc = that classifier's accuracy on the",
             f"classes the samples were conditioned on. Classifier test accuracy {summary['classifier_test_acc']:.3f};",
             f"fd of real train vs real test images: {summary['data_fd_train_vs_test']['fd']:.3f}.",
             f"{a.samples} samples per model (classes balanced); students: {len(a.seeds)} seed(s) "
             f"{a.seeds}{' (mean +- std)' if seeds > 1 else ''}, {a.student_steps} training steps each.",
             "sample s = wall time to draw all samples (1 CPU thread); x teacher = ratio to the teacher's",
             f"guided full-step ({a.full}) sampling, which costs 2 network evaluations per step (conditional +",
             "unconditional); students are unguided (1 per step). train s = distillation time per student.", "",
             "| model | seeds | fd | class_acc | sample s | x teacher | train s |", "|---|---|---|---|---|---|---|"]
    for label, r in res.items():
        s = statistics.mean(r["sample_s"])
        ratio = f"{s / ref_s:.3f}" if ref_s else "-"
        train = f"{statistics.mean(r['train_s']):.0f}" if r.get("train_s") else "-"
        lines.append(f"| {label} | {len(r['fd']) if r.get('train_s') else '-'} | {fmt(r['fd'], 2)} | {fmt(r['class_acc'], 3)} | {s:.2f} | {ratio} | {train} |")
    lines += ["", f"teacher training: {summary.get('teacher_train_s', '-')} s; whole run so far: "
              f"{summary.get('elapsed_s', '-')} s", "", "![samples](grid.png)", ""]
    (out / "report.md").write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/digits_unet")
    ap.add_argument("--data", choices=["digits", "fmnist"], default="digits")
    ap.add_argument("--fmnist-train", type=int, default=20000, help="fmnist: train images kept (seeded subset)")
    ap.add_argument("--teacher", default=None, help="a diffusers UNet folder (default: train one here)")
    ap.add_argument("--teacher-steps", type=int, default=2500)
    ap.add_argument("--teacher-lr", type=float, default=2e-3)
    ap.add_argument("--widths", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--methods", nargs="*", default=["progressive", "consistency", "reflow", "dmd", "sid"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--student-steps", type=int, default=400)
    ap.add_argument("--student-lr", type=float, default=3e-4)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--clf-steps", type=int, default=600)
    ap.add_argument("--full", type=int, default=32, help="the teacher's full step count")
    ap.add_argument("--reflow-pairs", type=int, default=1000)
    a = ap.parse_args()
    if a.samples < 20 or min(a.teacher_steps, a.student_steps, a.clf_steps) < 1:
        ap.error("--samples must be >= 20 and the step counts >= 1")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if a.data == "digits":
        src, test = digits_images(16, "train"), digits_images(16, "test")
    else:
        src, test = fashion_mnist_images("train", a.fmnist_train), fashion_mnist_images("test")

    t0 = time.perf_counter()
    clf = train_feature_classifier(src.x, src.y, steps=a.clf_steps)
    scorer = ImageScorer(clf, test.x)
    summary = {"classifier_test_acc": scorer.accuracy(test.x, test.y), "data": src.name.split("-")[0],
               "guidance": a.guidance, "args": vars(a), "classifier_train_s": round(time.perf_counter() - t0, 1),
               "note": "fd: Frechet distance in the features of the project's own classifier; not FID"}
    summary["data_fd_train_vs_test"] = scorer.score(src.x, src.y)
    print("classifier", summary["classifier_test_acc"], f"{summary['classifier_train_s']}s", flush=True)

    t0 = time.perf_counter()
    if a.teacher:
        net = load_unet(a.teacher)
    else:
        net = train_teacher(src, a.teacher_steps, a.widths, a.batch, a.teacher_lr)
        net.save_pretrained(out / "teacher_unet")
    summary["teacher_train_s"] = round(time.perf_counter() - t0, 1)
    teacher = Teacher(net)

    g = torch.Generator().manual_seed(123)
    y = torch.arange(a.samples) % 10
    z = torch.randn(a.samples, *src.dim, generator=g)
    per_class = [torch.nonzero(test.y == c).flatten() for c in range(10)]
    real = torch.stack([test.x[per_class[c][i]] for i in range(2) for c in range(10)])
    rows: dict[str, torch.Tensor] = {"real test images": real}
    results: dict[str, dict] = {}
    summary["results"] = results

    def save() -> None:
        summary["elapsed_s"] = round(time.perf_counter() - start, 1)
        grid_png(rows, out / "grid.png")
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        write_report(out, summary, a)

    def run(label: str, fn, train_s: float | None = None, row: bool = True) -> None:
        t1 = time.perf_counter()
        with torch.no_grad(), conditioning(y):
            x = fn()
        sample_s = round(time.perf_counter() - t1, 2)
        r = {**scorer.score(x, y), "sample_s": sample_s}
        slot = results.setdefault(label, {"fd": [], "class_acc": [], "sample_s": [], "train_s": []})
        for k, v in r.items():
            slot[k].append(v)
        if train_s is not None:
            slot["train_s"].append(round(train_s, 1))
        if row:
            rows[label] = x
        print(label, r, flush=True)

    summary["teacher_full_label"] = f"teacher@{a.full} w={a.guidance}"
    for k in dict.fromkeys((a.full, *STEPS)):    # the full count once, also when it is 1, 2 or 4
        with guidance(teacher, a.guidance):
            run(f"teacher@{k} w={a.guidance}", lambda k=k: ddim_sample(teacher, PROCESS, z, k, "velocity"))
    run(f"teacher@{a.full} w=1", lambda: ddim_sample(teacher, PROCESS, z, a.full, "velocity"))
    save()
    params = {"progressive": {"start_steps": 8}, "consistency": {"grid_steps": a.full, "skip": max(1, min(4, a.full // 4))},
              "reflow": {"pairs": a.reflow_pairs}, "dmd": {"fake_updates": 2}, "sid": {"fake_updates": 1}}
    for seed in a.seeds:
        for name in a.methods:
            t1 = time.perf_counter()
            method = distil(name, teacher, src, a.student_steps, a.batch, a.student_lr, params.get(name, {}),
                            a.guidance, a.full, seed)
            train_s = time.perf_counter() - t1
            for k in STEPS:
                run(f"{name}@{k}", lambda k=k: method.sample(z, k), train_s, row=seed == a.seeds[0])
            save()
    print((out / "report.md").read_text())


if __name__ == "__main__":
    main()
