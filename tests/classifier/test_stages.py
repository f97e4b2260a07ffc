"""Staged distillation: one student through several stages; the weights carry over between stages."""
import json

import pytest

import distill
from distill.config import load_config
from distill.errors import ConfigError


def _recipe(tmp_path, stages):
    return {
        "name": "st", "family": "classifier", "output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "c"),
        "data": {"name": "digits", "params": {"layout": "flat", "labeled_fraction": 0.2}, "batch_size": 64},
        "teacher": {"model": {"name": "mlp", "params": {"hidden": [32]}}, "train": {"epochs": 2}},
        "student": {"model": {"name": "mlp", "params": {"hidden": [8]}}},
        "methods": [{"name": "scratch"}], "train": {"epochs": 1},
        "engine": {"device": "cpu", "progress": False}, "eval": {"latency_runs": 2}, "stages": stages,
    }


def test_staged_student_runs_every_stage_and_carries_weights(tmp_path):
    stages = [
        {"label": "general", "method": {"name": "kd", "params": {"alpha": 1.0}},
         "data": {"name": "digits", "params": {"layout": "flat", "labeled_fraction": 0.05, "split_seed": 1}},
         "train": {"epochs": 2}},
        {"label": "specific", "method": {"name": "kd", "params": {"temperature": 2.0}}},
    ]
    s = distill.run(_recipe(tmp_path, stages), show_table=False, log=lambda m: None)
    staged = s["students"]["staged"]
    assert set(staged["stages"]) == {"general", "specific"}
    run = tmp_path / "runs" / "st"
    hist = json.loads((run / "students" / "staged" / "1-specific" / "result.json").read_text())["history"]
    assert len(hist) == 1  # the second stage's own epoch
    # the second stage started from the first stage's weights: after 3 epochs in all, the staged
    # student is better than the 1-epoch scratch baseline from the same initialisation
    assert staged["accuracy"] > s["students"]["scratch"]["accuracy"]
    assert (run / "student" / "model.safetensors").is_file()
    # resume: finished stages are not trained again
    logs = []
    distill.run(_recipe(tmp_path, stages), resume=True, show_table=False, log=logs.append)
    assert sum("already trained" in m for m in logs) >= 3


def test_stage_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"stages\.0\.method\.name: unknown method 'kdd'"):
        load_config(_recipe(tmp_path, [{"label": "a", "method": {"name": "kdd"}}]))
    with pytest.raises(ConfigError, match=r"stages\.0\.data\.params\.layuot: unknown key"):
        load_config(_recipe(tmp_path, [{"label": "a", "method": {"name": "kd"},
                                        "data": {"name": "digits", "params": {"layuot": "flat"}}}]))
    with pytest.raises(ConfigError, match="staged_label"):
        load_config(dict(_recipe(tmp_path, [{"label": "a", "method": {"name": "kd"}}]), staged_label="scratch"))
