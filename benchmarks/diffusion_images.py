"""Image path of the diffusion family on digits 16x16: a class-conditional UNet teacher (flow
matching, label dropout for classifier-free guidance), one distilled student per method, scored
by a Frechet distance in the features of a classifier trained here (NOT comparable to published
FID) and by that classifier's accuracy on the generated samples' classes. Writes report.md,
summary.json and grid.png under --out.

    .venv/bin/python benchmarks/diffusion_images.py --out runs/digits_unet --teacher-steps 1500
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from distill.eval.frechet import ImageScorer, train_feature_classifier
from distill.families.diffusion.base import DiffusionContext
from distill.families.diffusion.images import digits_images
from distill.families.diffusion.process import Process, ddim_sample
from distill.families.diffusion.unet import UNetDenoiser, conditioning, guidance, load_unet, make_unet
from distill.registry import methods
from distill.teacher import Teacher

PROCESS = Process("flow")


def train_teacher(src, steps: int, widths, batch: int, lr: float, p_uncond: float = 0.1) -> UNetDenoiser:
    torch.manual_seed(0)
    net = UNetDenoiser(make_unet(1, src.dim[-1], tuple(widths), num_classes=src.num_classes))
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


def distil(name: str, teacher: Teacher, src, steps: int, batch: int, lr: float, params: dict, w: float):
    student = UNetDenoiser(make_unet(1, src.dim[-1], tuple(teacher.module.unet.config.block_out_channels),
                                     num_classes=src.num_classes))
    ctx = DiffusionContext(PROCESS, "velocity", "velocity", 32, 1, total_steps=steps, seed=0)
    method = methods.get(name, "diffusion").builder(student, teacher, ctx, **params)
    opt = torch.optim.Adam(method.trainable_parameters(), lr=lr)
    g = torch.Generator().manual_seed(2)
    method.train()
    for i in range(steps):
        x0, y = src.sample_labeled(batch, g)
        with conditioning(y), guidance(teacher, w):    # the student learns the guided teacher
            terms = method({"x0": x0, "z": torch.randn(x0.shape, generator=g)})
        loss = sum(method.weights.get(k, 1.0) * v for k, v in terms.items())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i % 100 == 0:
            print(f"{name} step {i}: loss {loss.item():.3f}", flush=True)
    method.finalize()
    return method.eval()


def grid_png(rows: dict[str, torch.Tensor], path: Path, per_row: int = 20) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 1, figsize=(per_row * 0.45, len(rows) * 0.7))
    for ax, (label, x) in zip(axes if len(rows) > 1 else [axes], rows.items()):
        strip = torch.cat(list(x[:per_row, 0].clamp(-1, 1)), dim=1)         # (S, per_row * S)
        ax.imshow(strip.numpy(), cmap="gray", vmin=-1, vmax=1)
        ax.set_axis_off()
        ax.set_title(label, fontsize=7, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/digits_unet")
    ap.add_argument("--teacher", default=None, help="a diffusers UNet folder (default: train one here)")
    ap.add_argument("--teacher-steps", type=int, default=1500)
    ap.add_argument("--widths", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--methods", nargs="+", default=["progressive", "consistency"])
    ap.add_argument("--student-steps", type=int, default=400)
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--clf-steps", type=int, default=600)
    ap.add_argument("--full", type=int, default=32, help="the teacher's full step count")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    src, test = digits_images(16, "train"), digits_images(16, "test")

    t0 = time.perf_counter()
    clf = train_feature_classifier(src.x, src.y, steps=a.clf_steps)
    scorer = ImageScorer(clf, test.x)
    summary = {"classifier_test_acc": scorer.accuracy(test.x, test.y), "data": "digits16", "guidance": a.guidance,
               "note": "fd: Frechet distance in the features of the project's digits classifier; not FID"}
    summary["data_fd_train_vs_test"] = scorer.score(src.x, src.y)
    print("classifier", summary["classifier_test_acc"], f"{time.perf_counter() - t0:.1f}s", flush=True)

    t0 = time.perf_counter()
    if a.teacher:
        net = load_unet(a.teacher)
    else:
        net = train_teacher(src, a.teacher_steps, a.widths, 64, 2e-3)
        net.save_pretrained(out / "teacher_unet")
    summary["teacher_train_s"] = round(time.perf_counter() - t0, 1)
    teacher = Teacher(net)

    g = torch.Generator().manual_seed(123)
    y = torch.arange(a.samples) % 10
    z = torch.randn(a.samples, *src.dim, generator=g)
    rows, results = {}, {}

    def run(label: str, fn) -> None:
        t1 = time.perf_counter()
        with torch.no_grad(), conditioning(y):
            x = fn()
        results[label] = {**scorer.score(x, y), "sample_s": round(time.perf_counter() - t1, 2)}
        rows[label] = x
        print(label, results[label], flush=True)

    for k in (a.full, 1, 2, 4):
        with guidance(teacher, a.guidance):
            run(f"teacher@{k} w={a.guidance}", lambda k=k: ddim_sample(teacher, PROCESS, z, k, "velocity"))
    run(f"teacher@{a.full} w=1", lambda: ddim_sample(teacher, PROCESS, z, a.full, "velocity"))
    params = {"progressive": {"start_steps": 8}, "consistency": {"grid_steps": 32, "skip": 4},
              "reflow": {"pairs": 2000}, "dmd": {"regression_pairs": 1000}}
    for name in a.methods:
        t1 = time.perf_counter()
        method = distil(name, teacher, src, a.student_steps, 64, 3e-4, params.get(name, {}), a.guidance)
        results[f"{name} train_s"] = round(time.perf_counter() - t1, 1)
        for k in (1, 2, 4):
            run(f"{name}@{k}", lambda k=k: method.sample(z, k))
    summary["results"] = results
    grid_png(rows, out / "grid.png")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    lines = ["# digits 16x16, class-conditional UNet", "",
             "fd = Frechet distance in the penultimate features of a small classifier trained here on the same",
             "data; it is not comparable to published FID. class_acc = that classifier's accuracy on the",
             f"classes the samples were conditioned on. Classifier test accuracy {summary['classifier_test_acc']:.3f}.", "",
             "| model | fd | class_acc | sample s |", "|---|---|---|---|"]
    for label, r in results.items():
        if isinstance(r, dict):
            lines.append(f"| {label} | {r['fd']:.3f} | {r['class_acc']:.3f} | {r['sample_s']} |")
    lines += ["", "![samples](grid.png)", ""]
    (out / "report.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
