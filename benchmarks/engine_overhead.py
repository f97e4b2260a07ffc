"""Time per optimiser step: the distill engine vs a plain PyTorch loop (same model, data, seed),
and vs the same plain loop under Lightning Fabric when `lightning_fabric` is installed.

    python benchmarks/engine_overhead.py [--epochs 3] [--repeats 3]

Prints a table with ms/step for each loop, the engine's and Fabric's ratio to the plain loop
(target for the engine: <= 1.05) and the engine's extra time per step in microseconds. The engine run has
progress bar and metric logging on, as a user would run it; evaluation and checkpoints are off
in both so that only the loop machinery is compared. Per-step time is the difference between a
(1 + epochs)-epoch run and a 1-epoch run divided by the difference in steps, so one-off setup
(building the optimiser, the accelerator) cancels out for both loops alike.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from distill.config import EngineConfig, OptimizerConfig, TrainConfig
from distill.data.base import TensorLoader
from distill.data.digits import digits
from distill.families.classifier.runner import train_phase
from distill.methods.scratch import Scratch
from distill.models.io import build_model

CASES = [
    ("mlp [256,256], digits 8x8", "mlp", {"hidden": [256, 256]}, dict(layout="flat"), 64),
    ("convnet w32 d2, digits 16x16", "convnet", {"width": 32, "depth": 2}, dict(size=16), 64),
]


def plain(model, loader, epochs, lr, device="cpu"):
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    steps = 0
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for batch in loader:
            x, y = batch["x"].to(device, non_blocking=True), batch["y"].to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
    return steps


def fabric_loop(model, loader, epochs, lr, device="cpu"):
    """The plain loop written the way Lightning Fabric's docs write it (setup, fabric.backward)."""
    from lightning_fabric import Fabric

    fabric = Fabric(accelerator="cuda" if device == "cuda" else "cpu", devices=1, precision="32-true")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model, opt = fabric.setup(model, opt)
    model.train()
    steps = 0
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for batch in loader:
            x, y = fabric.to_device((batch["x"], batch["y"]))
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            fabric.backward(loss)
            opt.step()
            steps += 1
    return steps


def have_fabric() -> bool:
    try:
        import lightning_fabric  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    torch.set_num_threads(args.threads)
    rows = []
    for label, name, params, data_kw, bs in CASES:
        b = digits(**data_kw)
        t_plain, t_engine, t_fabric = [], [], []

        def timed_loop(loop):
            def timed(epochs, r):
                torch.manual_seed(r)
                m = build_model(name, params, b.input_shape, 10)
                sync()
                t0 = time.perf_counter()
                steps = loop(m, TensorLoader(b.train, bs, seed=r), epochs, 1e-3, args.device)
                sync()
                return time.perf_counter() - t0, steps
            return timed

        timed_plain, timed_fabric = timed_loop(plain), timed_loop(fabric_loop)

        def timed_engine(epochs, r):
            torch.manual_seed(r)
            m = build_model(name, params, b.input_shape, 10)
            cfg = EngineConfig(device=args.device, progress=True, eval_every=10**9, log_every=10)
            sync()
            t0 = time.perf_counter()
            eng = train_phase(Scratch(m), b.train, b.test, TrainConfig(epochs=epochs, optimizer=OptimizerConfig(lr=1e-3)),
                              cfg, batch_size=bs, seed=r, out_dir=None, eval_fn=lambda: {})
            sync()
            return time.perf_counter() - t0, eng.step_count

        loops = [(timed_plain, t_plain), (timed_engine, t_engine)]
        if have_fabric():
            loops.append((timed_fabric, t_fabric))
        for fn, _ in loops:  # warm-up
            fn(1, 0)
        for r in range(args.repeats):
            for fn, out in loops:  # interleaved, so that the machine's load hits every loop alike
                (t1, s1), (t2, s2) = fn(1, r), fn(1 + args.epochs, r)
                out.append((t2 - t1) / (s2 - s1))
        p, e = statistics.median(t_plain), statistics.median(t_engine)
        f = statistics.median(t_fabric) if t_fabric else None
        rows.append((label, bs, 1000 * p, 1000 * e, e / p, None if f is None else 1000 * f, None if f is None else f / p))
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {args.threads} thread(s)"
    print(f"\nengine overhead ({args.epochs} epochs, median of {args.repeats} runs, {where})")
    print("| model | batch | plain ms/step | engine ms/step | engine / plain | engine extra us/step | "
          "Fabric ms/step | Fabric / plain |")
    print("|---|---|---|---|---|---|---|---|")
    for label, bs, p, e, ratio, f, fratio in rows:
        fab = f"{f:.3f} | {fratio:.3f}" if f is not None else "- | - (lightning_fabric not installed)"
        print(f"| {label} | {bs} | {p:.3f} | {e:.3f} | {ratio:.3f} | {1000 * (e - p):.0f} | {fab} |")


if __name__ == "__main__":
    main()
