"""Two processes over gloo (DDP on CPU) give the weights of one process with the same global batch;
taps and the teacher-output cache work under the DDP wrapper."""
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from distill.models.io import load_model

RECIPE = {
    "name": "ddp", "family": "classifier", "seed": 0,
    "data": {"name": "digits", "params": {"layout": "image"}, "batch_size": 64, "drop_last": True},
    "teacher": {"model": {"name": "convnet", "params": {"width": 16, "depth": 2}}, "train": {"epochs": 1},
                "cache_outputs": True},
    "student": {"model": {"name": "convnet", "params": {"width": 8, "depth": 2}}},
    "methods": [
        {"name": "kd"},
        {"name": "fitnet", "params": {"student_layer": "features.2", "teacher_layer": "features.6",
                                      "projector_norm": False}},
    ],
    "train": {"epochs": 1, "max_steps": 10, "optimizer": {"name": "sgd", "lr": 0.05}},
    "engine": {"device": "cpu", "progress": False, "log_every": 1},
    "eval": {"latency_runs": 2, "val_fraction": 0.0},  # the data this parity was recorded on
}


def _run(tmp_path, name, *extra):
    cfg = dict(RECIPE, output_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"))
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "DISTILL_RUN_DIR")}
    out = subprocess.run([sys.executable, "-m", "distill.cli.main", "run", str(path), f"name={name}", *extra],
                         capture_output=True, text=True, timeout=600, env={**env, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp_path / "runs" / name


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process(tmp_path):
    single = _run(tmp_path, "single")
    ddp = _run(tmp_path, "ddp", "--nproc", "2")
    for method in ("kd", "fitnet"):
        a = load_model(single / "students" / method).state_dict()
        b = load_model(ddp / "students" / method).state_dict()
        for k in a:
            assert torch.allclose(a[k], b[k], atol=1e-6), (method, k, (a[k] - b[k]).abs().max())
    # the feature loss is read through the DDP wrapper: not silently zero
    hints = [json.loads(l)["loss/hint"] for l in (ddp / "metrics.jsonl").read_text().splitlines()
             if '"loss/hint"' in l]
    assert len(hints) == 10 and min(hints) > 1e-3
    # one run folder, written once: summary from the main process only
    summary = json.loads((ddp / "summary.json").read_text())
    assert set(summary["students"]) == {"kd", "fitnet"}
    assert not (tmp_path / "runs" / "ddp-1").exists()
