"""Epoch time of KD with cached teacher outputs vs a live teacher.

    python benchmarks/teacher_cache.py [--data fashion_mnist|digits] [--epochs 2]

The teacher is a ConvNet, the student a small MLP; the script prints the teacher/student
forward cost ratio, the KD epoch time with the live teacher and with the cache, their ratio,
the one-off cache build time and the cache size on disk. Timings on CPU, one thread.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from distill.config import EngineConfig, OptimizerConfig, TrainConfig
from distill.data.fashion_mnist import available
from distill.methods.kd import KD
from distill.families.classifier.runner import train_phase
from distill.models.io import build_model
from distill.registry import datasets
from distill.teacher import Teacher, TeacherCache


def fwd_ms(model, x, reps=5):
    with torch.no_grad():
        model(x)
        t = []
        for _ in range(reps):
            t0 = time.perf_counter()
            model(x)
            t.append(time.perf_counter() - t0)
    return 1000 * statistics.median(t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="fashion_mnist" if available() else "digits")
    ap.add_argument("--train-subset", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    params = {"train_subset": args.train_subset} if args.data == "fashion_mnist" else {}
    b = datasets.get(args.data, "classifier").builder(**params)
    torch.manual_seed(0)
    teacher = Teacher(build_model("convnet", {"width": 64, "depth": 3}, b.input_shape, b.num_classes))
    x = b.train.x[:256]
    student_proto = build_model("mlp", {"hidden": [128]}, b.input_shape, b.num_classes)
    t_ms, s_ms = fwd_ms(teacher.module, x), fwd_ms(student_proto, x)
    tmp = Path(tempfile.mkdtemp())
    try:
        t0 = time.perf_counter()
        cache = TeacherCache.build(tmp / "cache", teacher, b.train.x, data_hash=b.train.fingerprint(),
                                   temperature=4.0, k=b.num_classes)
        build_s = time.perf_counter() - t0
        times = {}
        for mode in ("live", "cached"):
            torch.manual_seed(1)
            student = build_model("mlp", {"hidden": [128]}, b.input_shape, b.num_classes)
            method = KD(student, teacher, temperature=4.0)
            if mode == "cached":
                method.cache = cache
            t0 = time.perf_counter()
            train_phase(method, b.train, b.test, TrainConfig(epochs=args.epochs, optimizer=OptimizerConfig(lr=1e-3)),
                        EngineConfig(device="cpu", progress=False, eval_every=10**9), batch_size=128, seed=0,
                        out_dir=None, eval_fn=lambda: {})
            times[mode] = (time.perf_counter() - t0) / args.epochs
        print(f"\nteacher cache ({args.data}, {len(b.train)} train images, batch 128, {args.threads} thread(s), CPU)")
        print("| teacher fwd / student fwd | live s/epoch | cached s/epoch | speed-up | cache build s | cache size |")
        print("|---|---|---|---|---|---|")
        print(f"| {t_ms / s_ms:.1f}x | {times['live']:.2f} | {times['cached']:.2f} | "
              f"{times['live'] / times['cached']:.2f}x | {build_s:.2f} | {cache.size_bytes() / 1024:.0f} KB |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
