"""End-to-end graph runs on a synthetic contextual SBM, recipe validation, resume."""
import json
from pathlib import Path

import pytest

import distill
from distill.config import load_config
from distill.errors import ConfigError
from distill.families.graph.runner import run_graph

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "graph"


def recipe(tmp_path, **over):
    rec = {"name": "csbm_test", "family": "graph", "seed": 0, "output_dir": str(tmp_path),
           "data": {"name": "csbm", "params": {"num_nodes": 300, "num_features": 16, "feature_signal": 0.5}},
           "split": {"train_per_class": 10, "val_per_class": 10},
           "teacher": {"model": {"name": "gcn", "params": {"hidden": 16}}, "train": {"epochs": 60, "optimizer": {"lr": 0.02}}},
           "student": {"model": {"name": "mlp", "params": {"hidden": [16]}}},
           "methods": [{"name": "scratch", "label": "mlp"}, {"name": "glnn"}, {"name": "ffg2m"}],
           "train": {"epochs": 60, "optimizer": {"lr": 0.02}},
           "eval": {"patience": 20, "latency_nodes": 5},
           "engine": {"device": "cpu", "progress": False, "checkpoint_every": 20}}
    rec.update(over)
    return rec


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("graph_run")
    logs = []
    summary = distill.run(recipe(tmp), log=logs.append)
    return tmp, summary, logs


def test_glnn_beats_plain_mlp_which_beats_chance(finished):
    _, s, _ = finished
    mlp, glnn, ffg2m = (s["students"][k]["accuracy"] for k in ("mlp", "glnn", "ffg2m"))
    assert s["teacher"]["accuracy"] > 90
    assert mlp > 100 / 3 + 20                  # features alone carry signal
    assert glnn > mlp + 5 and ffg2m > mlp + 5  # the teacher's graph knowledge reaches the MLP


def test_summary_follows_the_family_convention(finished):
    tmp, s, _ = finished
    run_dir = Path(s["run_dir"])
    assert s["family"] == "graph" and s["primary_metric"] == "accuracy"
    for m in s["students"].values():
        assert {"accuracy", "best_accuracy", "val_accuracy", "params"} <= set(m)
        assert m["best_accuracy"] >= m["accuracy"] - 1e-9
    assert json.loads((run_dir / "summary.json").read_text())["students"].keys() == s["students"].keys()
    report = (run_dir / "report.md").read_text()
    assert "glnn" in report and "plots/comparison.png" in report
    assert (run_dir / "plots" / "comparison.png").stat().st_size > 0
    assert (run_dir / "student" / "model.safetensors").is_file()
    assert s["latency"]["speedup"] > 1
    assert (run_dir / "metrics.jsonl").read_text().count('"phase": "glnn"') > 0


def test_resume_reuses_finished_phases(finished):
    tmp, s, _ = finished
    logs = []
    again = distill.run(recipe(tmp), resume=True, log=logs.append)
    assert sum("reusing" in m for m in logs) == 4
    assert again["students"]["glnn"]["accuracy"] == s["students"]["glnn"]["accuracy"]


def test_inductive_setting_reports_both_parts(tmp_path):
    rec = recipe(tmp_path, split={"train_per_class": 10, "val_per_class": 10, "setting": "inductive"},
                 methods=[{"name": "glnn"}], eval={"patience": 10, "latency_nodes": 0})
    rec["train"]["epochs"] = rec["teacher"]["train"]["epochs"] = 30
    s = run_graph(load_config(rec), run_dir=None, log=lambda m: None)
    m = s["students"]["glnn"]
    assert s["data"]["test_ind"] == round(0.2 * (300 - 60))
    n_t, n_i = s["data"]["test"], s["data"]["test_ind"]
    assert m["accuracy"] == pytest.approx((m["accuracy_tran"] * n_t + m["accuracy_ind"] * n_i) / (n_t + n_i), abs=1e-3)


@pytest.mark.parametrize("override, field", [
    ("methods.1.params.lam=2", "methods.1.params.lam"),
    ("methods.1.params.temprature=2", "methods.1.params.temprature"),
    ("methods.0.name=glnm", "methods.0.name"),
    ("split.setting=semi", "split.setting"),
    ("teacher.model.name=mlp", "teacher.model.name"),
    ("student.model.name=gat", "student.model.name"),
    ("data.params.num_nodes=3", "data.params.num_nodes"),
    ("teacher.model.params.hidden=0", "teacher.model.params.hidden"),
])
def test_bad_recipe_names_the_field(tmp_path, override, field):
    with pytest.raises(ConfigError) as e:
        load_config(recipe(tmp_path), [override])
    assert field in str(e.value)


@pytest.mark.parametrize("name", sorted(p.name for p in RECIPES.glob("*.yaml")))
def test_shipped_recipes_validate(name):
    cfg = load_config(RECIPES / name)
    assert cfg.family == "graph"


def test_graph_bench_suite_cells_are_valid_recipes(tmp_path):
    """Every cell of benchmarks/graph.yaml resolves to a valid recipe; the `mlp` baseline keeps its
    own training section (weight decay) through the suite."""
    from distill.bench import cell_overrides, load_suite

    root = RECIPES.parents[1]
    suite = load_suite(root / "benchmarks" / "graph.yaml", output_dir=str(tmp_path))
    assert suite.baselines == ["mlp", "glnn"] and len(suite.cells()) == 2 * 3 * 10
    for cell in suite.cells():
        src = cell.recipe.source if Path(cell.recipe.source).is_absolute() else root / cell.recipe.source
        cfg = load_config(src, cell_overrides(suite, cell))
        (m,) = cfg.methods
        assert m.display == cell.method.label and cfg.seed == cell.seed
        assert cfg.split.setting == cell.recipe.label
        if m.display == "mlp":
            assert m.train is not None and m.train.optimizer.weight_decay == 5e-4
        else:
            assert m.train is None
