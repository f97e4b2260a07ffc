"""The diffusion runner end to end on a tiny recipe, the teacher cache, and recipe errors."""
import json
from pathlib import Path

import pytest

from distill.config import load_config
from distill.errors import ConfigError


def recipe(tmp_path, **over):
    r = {"name": "tiny", "family": "diffusion", "output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"),
         "data": {"name": "toy2d", "params": {"name": "8gaussians"}, "batch_size": 128},
         "teacher": {"model": {"name": "toy_mlp", "params": {"hidden": 32, "depth": 2}}, "steps": 8,
                     "train": {"max_steps": 150, "optimizer": {"lr": 0.003}}},
         "student": {"model": {"name": "toy_mlp", "params": {"hidden": 16, "depth": 2}}, "steps": 2},
         "methods": [{"name": "progressive", "params": {"start_steps": 8}}, {"name": "reflow", "params": {"pairs": 500}}],
         "train": {"max_steps": 20},
         "eval": {"samples": 200, "steps": [1, 2], "projections": 32},
         "engine": {"device": "cpu", "progress": False}}
    r.update(over)
    return r


def test_diff_run_writes_summary_report_and_caches_the_teacher(tmp_path):
    from distill.api import run

    s = run(recipe(tmp_path), log=lambda m: None, show_table=False)
    assert s["family"] == "diffusion" and s["primary_metric"] == "swd" and s["higher_is_better"] is False
    for label in ("progressive", "reflow"):
        m = s["students"][label]
        assert m["swd"] == m["swd@2"] and m["swd@1"] > 0 and m["params"] < s["teacher"]["params"]
    assert {"swd@1", "swd@2", "swd_teacher@1", "sample_ms@2"} <= set(s["teacher"])
    run_dir = Path(s["run_dir"])
    assert json.loads((run_dir / "summary.json").read_text())["students"].keys() == s["students"].keys()
    report = (run_dir / "report.md").read_text()
    assert "teacher at 1" in report and (run_dir / "samples.png").is_file()
    cached = list((tmp_path / "cache" / "diffusion_teachers").glob("*/teacher.pt"))
    assert len(cached) == 1
    logs = []
    run(recipe(tmp_path, methods=[{"name": "reflow", "params": {"pairs": 200}}]), log=logs.append, show_table=False)
    assert any("teacher: cached" in m for m in logs)


@pytest.mark.parametrize("over,field", [
    ({"teacher": {"process": "vp", "param": "velocity"}}, "teacher.param"),
    ({"methods": [{"name": "progressive", "params": {"start_step": 8}}]}, "methods.0.params.start_step"),
    ({"methods": [{"name": "progresive"}]}, "methods.0.name"),
    ({"student": {"model": {"name": "toy_mlp", "params": {"width": 3}}}}, "student.model.params.width"),
    ({"data": {"name": "toy2d", "params": {"name": "spiral"}}}, "data.params.name"),
    ({"eval": {"samples": 2}}, "eval.samples"),
])
def test_diff_bad_config_names_the_field(tmp_path, over, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(recipe(tmp_path, **over))


@pytest.mark.parametrize("path", sorted(Path("recipes/diffusion").glob("*.yaml")), ids=lambda p: p.stem)
def test_diff_recipes_load(path):
    cfg = load_config(path)
    assert cfg.family == "diffusion"


def test_diff_run_guidance_with_a_class_conditional_teacher(tmp_path):
    from distill.api import run

    r = recipe(tmp_path, methods=[{"name": "guidance", "params": {"eval_scales": [1.0, 3.0]}},
                                  {"name": "guidance", "label": "adapter", "params": {"variant": "adapter"}}])
    r["teacher"]["model"]["params"]["num_classes"] = 8
    r["teacher"]["labels"] = True
    r["student"] = {"steps": 4}
    r["eval"]["steps"] = [4, 8]
    s = run(r, log=lambda m: None, show_table=False)
    full, adapter = s["students"]["guidance"], s["students"]["adapter"]
    T = s["teacher"]["steps"]
    assert {"guided_swd@4/w3", "guided_acc@4/w3", f"guided_teacher_acc@{T}/w3", "guided_ms@4/w1"} <= set(full)
    assert 0 <= full["guided_acc@4/w3"] <= 1 and full["guided_teacher_swd@8/w1"] == 0.0
    assert "guided_swd@4/w1" in adapter and adapter["params"] == full["params"]
    assert "SWD to CFG teacher" in (Path(s["run_dir"]) / "report.md").read_text()
    import torch

    saved = torch.load(Path(s["run_dir"]) / "students" / "adapter" / "method.pt", weights_only=True)
    assert saved["variant"] == "adapter" and saved["adapters"] and saved["w_enc"]
    # the conditional teacher is cached apart from an unconditional one
    keys = {p.parent.name for p in (tmp_path / "cache" / "diffusion_teachers").glob("*/teacher.pt")}
    run(recipe(tmp_path, methods=[{"name": "reflow", "params": {"pairs": 200}}]), log=lambda m: None, show_table=False)
    assert len({p.parent.name for p in (tmp_path / "cache" / "diffusion_teachers").glob("*/teacher.pt")} - keys) == 1


def test_diff_teacher_labels_need_a_conditional_model(tmp_path):
    from distill.api import run

    r = recipe(tmp_path, methods=[{"name": "reflow", "params": {"pairs": 100}}])
    r["teacher"]["labels"] = True
    with pytest.raises(ConfigError, match="teacher.labels"):
        run(r, log=lambda m: None, show_table=False)
