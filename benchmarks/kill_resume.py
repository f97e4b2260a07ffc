"""SIGKILL a run at random moments (checkpoint writes included), resume it, compare with an
uninterrupted run. Prints one line per trial and the tally.

    python benchmarks/kill_resume.py [--trials 20] [--seed 0]

Each trial runs a tiny classifier recipe that checkpoints every 3 steps, kills it with SIGKILL
after a random delay (then again on each resume, up to 3 kills), resumes with --resume until it
finishes, and checks: every checkpoint file left on disk loads, and the final student weights
equal those of an uninterrupted run bit for bit.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

RECIPE = {
    "name": "k", "family": "classifier", "seed": 0,
    "data": {"name": "digits", "params": {"layout": "flat", "labeled_fraction": 0.2}, "batch_size": 32},
    "teacher": {"model": {"name": "mlp", "params": {"hidden": [64]}}, "train": {"epochs": 2}},
    "student": {"model": {"name": "mlp", "params": {"hidden": [16], "dropout": 0.1}}},
    "methods": [{"name": "scratch"}, {"name": "kd"}],
    "train": {"epochs": 3},
    "engine": {"device": "cpu", "progress": False, "checkpoint_every": 3, "keep_checkpoints": 2},
    "eval": {"latency_runs": 2},
}


def cmd(path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "distill.cli.main", "run", str(path), *extra]


def weights(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    return {m: load_file(str(run / "students" / m / "model.safetensors")) for m in ("scratch", "kd")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    root = Path(tempfile.mkdtemp())
    try:
        ref_cfg = dict(RECIPE, output_dir=str(root / "ref"), cache_dir=str(root / "cache"))
        (root / "ref.yaml").write_text(yaml.safe_dump(ref_cfg))
        t0 = time.perf_counter()
        subprocess.run(cmd(root / "ref.yaml"), check=True, env=env, capture_output=True)
        full = time.perf_counter() - t0
        ref = weights(root / "ref" / "k")
        ok = 0
        for trial in range(args.trials):
            out = root / f"t{trial}"
            cfg = dict(RECIPE, output_dir=str(out), cache_dir=str(root / "cache"))
            path = root / f"t{trial}.yaml"
            path.write_text(yaml.safe_dump(cfg))
            kills, resumes, first = 0, 0, True
            while True:
                # a process killed before it wrote config.yaml left nothing to resume: start it again
                resume = not first and (out / "k" / "config.yaml").is_file()
                if not resume:
                    shutil.rmtree(out, ignore_errors=True)
                proc = subprocess.Popen(cmd(path, *(["--resume"] if resume else [])), env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                first = False
                if kills < 3:
                    try:
                        proc.wait(timeout=rng.uniform(0.3, 0.9) * full)
                    except subprocess.TimeoutExpired:
                        proc.send_signal(signal.SIGKILL)
                        proc.wait()
                        kills += 1
                        continue
                else:
                    proc.wait()
                if proc.returncode != 0:
                    print(f"trial {trial}: run failed: {proc.stderr.read().decode()[-500:]}")
                    break
                resumes += 1
                break
            run = out / "k"
            good = proc.returncode == 0
            bad_ckpt = 0
            for ck in run.rglob("step_*.pt"):  # anything left must load
                try:
                    torch.load(ck, weights_only=True)
                except Exception:
                    bad_ckpt += 1
            if good:
                got = weights(run)
                same = all(torch.equal(ref[m][k], got[m][k]) for m in ref for k in ref[m])
            else:
                same = False
            ok += int(good and same and not bad_ckpt)
            print(f"trial {trial:2d}: {kills} kill(s), finished={good}, identical weights={same}, "
                  f"unreadable checkpoints={bad_ckpt}")
        print(f"\n{ok}/{args.trials} runs killed with SIGKILL and resumed ended with weights identical to an "
              f"uninterrupted run (uninterrupted run: {full:.1f} s)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
