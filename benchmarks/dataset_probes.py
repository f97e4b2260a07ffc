"""The digits-tier settings behind `benchmarks/dataset.py`, measured: expert quality against the
expert batch (trajectory methods), SRe2L's teacher on clean and augmented test digits against its
epochs, and SRe2L's accuracy against the BN-statistics weight r_bn.

    OMP_NUM_THREADS=1 python benchmarks/dataset_probes.py --out runs/bench/dataset_probes
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

DIGITS_DATA = {"name": "digits", "params": {"size": 16}}
NET = {"name": "convnet", "params": {"width": 32}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/bench/dataset_probes")
    ap.add_argument("--r-bn", type=float, nargs="*", default=[0.01, 1.0, 10.0])
    args = ap.parse_args()
    from distill.api import run
    from distill.families.dataset.augment import dsa
    from distill.families.dataset.base import DistillContext
    from distill.families.dataset.config import DatasetRunConfig
    from distill.families.dataset.evaluate import test_accuracy
    from distill.families.dataset.experts import train_experts, unflatten
    from distill.families.dataset.runner import load_real, net_builder
    from distill.families.dataset.sre2l import SRe2L

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    cfg = DatasetRunConfig.model_validate({"family": "dataset", "data": DIGITS_DATA, "model": NET})
    d = load_real(cfg)
    make = net_builder(cfg.model, tuple(d["x"].shape[1:]), d["num_classes"])
    ctx = DistillContext(d["x"], d["y"], d["num_classes"], 1, make, torch.device("cpu"), 0, NET["name"], NET["params"])
    lines = ["# Digits-tier probes", "", "## Experts (plain SGD, lr 0.01, DSA augmentation), one expert each", "",
             "| epochs | batch | SGD steps | test accuracy % | logit std on test |", "|---|---|---|---|---|"]
    for epochs, batch in ((10, 256), (10, 32), (30, 32)):
        traj = train_experts(ctx, 1, epochs, 0.01, batch_size=batch)[0]
        net = make(0)
        with torch.no_grad():
            for p, v in zip(net.parameters(), unflatten(net, traj[-1]).values()):
                p.copy_(v)
            std = float(net.eval()(d["test_x"]).std())
        steps = epochs * -(-len(d["x"]) // batch)
        lines.append(f"| {epochs} | {batch} | {steps} | {test_accuracy(net, d['test_x'], d['test_y']):.1f} | {std:.2f} |")
        print(lines[-1], flush=True)
    lines += ["", "## SRe2L's teacher (ConvNet with batch norm), by training epochs", "",
              "| epochs | test accuracy % | on DSA-augmented test images % |", "|---|---|---|"]
    for epochs in (20, 60):
        teacher = SRe2L(ctx, teacher_epochs=epochs).squeeze()
        aug = dsa(d["test_x"], 1, siamese=False)
        lines.append(f"| {epochs} | {test_accuracy(teacher, d['test_x'], d['test_y']):.1f} | "
                     f"{test_accuracy(teacher, aug, d['test_y']):.1f} |")
        print(lines[-1], flush=True)
    lines += ["", "## SRe2L at IPC 10 against r_bn (teacher 60 epochs, relabel once, 300 iterations; "
              "protocol of the digits tier, 3 evaluation networks)", "",
              "| r_bn | accuracy % | KD on random real % |", "|---|---|---|"]
    recipe = {"name": "probe_rbn", "family": "dataset", "seed": 0, "output_dir": str(out / "runs"),
              "data": DIGITS_DATA, "ipc": 10, "model": NET,
              "eval": {"model": NET, "n_models": 3, "epochs": 300, "full_data_epochs": 0},
              "engine": {"device": "cpu", "progress": False}, "baselines": False,
              "methods": [{"name": "sre2l", "label": f"rbn{r}", "iterations": 300,
                           "params": {"teacher_epochs": 60, "r_bn": r}} for r in args.r_bn]}
    s = run(recipe, overwrite=True, log=lambda m: None, show_table=False)
    for r in args.r_bn:
        m = s["students"][f"rbn{r}"]
        lines.append(f"| {r} | {m['accuracy']:.2f} +- {m['accuracy_std']:.2f} | {m['kd_random_real']:.2f} |")
        print(lines[-1], flush=True)
    lines += ["", f"Wall time: {(time.perf_counter() - t_all) / 60:.1f} min (CPU)."]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
