"""The evaluation protocol, the synthetic-set file, recipe errors, and every registered method end to end."""
import json

import pytest
import torch

from distill.api import run
from distill.config import load_config
from distill.errors import ConfigError
from distill.families.dataset.base import SyntheticSet
from distill.families.dataset.evaluate import EvalProtocol, evaluate_set, load_synthetic, save_synthetic
from distill.models.io import build_model
from distill.registry import methods

TINY_EVAL = {"model": {"name": "convnet", "params": {"width": 8}}, "n_models": 1, "epochs": 4,
             "full_data_epochs": 1}
SMOKE = {"mtt": {"num_experts": 1, "expert_epochs": 2, "max_start_epoch": 1, "match_epochs": 1, "syn_steps": 2},
         "herding": {}, "sre2l": {"teacher_epochs": 1}}
SMOKE["ftd"] = SMOKE["datm"] = SMOKE["mtt"]


def recipe(tmp_path, methods_, **kw):
    return {"name": "tiny", "family": "dataset", "output_dir": str(tmp_path / "runs"), "ipc": 1,
            "model": {"name": "convnet", "params": {"width": 8}}, "eval": dict(TINY_EVAL),
            "engine": {"device": "cpu", "log_every": 1}, "methods": methods_, **kw}


def test_protocol_is_deterministic_given_seeds():
    g = torch.Generator().manual_seed(0)
    s = SyntheticSet(torch.randn(20, 1, 8, 8, generator=g), torch.arange(10).repeat(2))
    tx, ty = torch.randn(50, 1, 8, 8, generator=g), torch.randint(0, 10, (50,), generator=g)
    p = EvalProtocol(model={"name": "convnet", "params": {"width": 8}}, n_models=2, epochs=3, batch_size=8)
    make = lambda seed: build_model("convnet", {"width": 8}, (1, 8, 8), 10, family="dataset")  # noqa: E731
    a, b = (evaluate_set(make, s, tx, ty, p, seed=3) for _ in range(2))
    assert a["accs"] == b["accs"]
    soft = SyntheticSet(s.images, torch.randn(20, 10, generator=g))
    assert evaluate_set(make, soft, tx, ty, p, seed=3)["accs"] == evaluate_set(make, soft, tx, ty, p, seed=3)["accs"]


def test_synthetic_file_loads_with_plain_safetensors(tmp_path):
    from safetensors.torch import load_file

    s = SyntheticSet(torch.randn(4, 1, 8, 8), torch.randn(4, 10), lr=0.02)
    path = save_synthetic(s, tmp_path / "s.safetensors", {"method": "dm", "ipc": 1})
    t = load_file(str(path))
    assert torch.equal(t["images"], s.images) and torch.equal(t["labels"], s.labels)
    back, meta = load_synthetic(path)
    assert back.lr == pytest.approx(0.02) and back.soft and meta == {"method": "dm", "ipc": 1}


@pytest.mark.parametrize("override, field", [
    ("ipc=0", "ipc"),
    ('methods=[{"name": "dm", "params": {"lr_imgg": 1}}]', "methods.0.params.lr_imgg"),
    ('methods=[{"name": "dmm"}]', "methods.0.name"),
    ('methods=[{"name": "mtt", "params": {"syn_step": 3}}]', "methods.0.params.syn_step"),
    ('methods=[{"name": "ftd", "params": {"num_experts": 0}}]', "methods.0.params.num_experts"),
    ("eval.strategy=color_blur", "eval.strategy"),
    ("eval.n_models=0", "eval.n_models"),
    ("data.name=cora", "data.name"),
])
def test_bad_recipe_errors_name_the_field(tmp_path, override, field):
    with pytest.raises(ConfigError) as e:
        load_config(recipe(tmp_path, [{"name": "dm"}]), [override])
    assert field in str(e.value)


def test_every_method_runs_and_the_run_folder_is_complete(tmp_path):
    names = methods.names("dataset")
    assert {"random_real", "herding", "dc", "dsa", "dm", "mtt", "ftd", "datm", "datadam", "sre2l"} <= set(names)
    ms = [{"name": n, "iterations": 2, "params": SMOKE.get(n, {})} for n in names]
    s = run(recipe(tmp_path, ms), log=lambda m: None, show_table=False)
    d = tmp_path / "runs" / "tiny"
    assert s["family"] == "dataset" and s["primary_metric"] == "accuracy"
    assert {"random_real", "random_real_noaug"} <= set(s["baselines"]) and "accuracy" in s["teacher"]
    for n in names:
        m = s["students"][n]
        assert 0 <= m["accuracy"] <= 100 and "best_accuracy" in m
        assert (d / "synthetic" / f"{n}_set0.safetensors").is_file() and (d / "plots" / f"{n}.png").is_file()
    assert s["students"]["datm"]["soft_labels"] and "kd_random_real" in s["students"]["sre2l"]
    assert not s["students"]["dm"]["soft_labels"]
    assert json.loads((d / "summary.json").read_text())["card"]["ipc"] == 1
    assert "Protocol card" in (d / "report.md").read_text()
    logged = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(v)) for r in logged for k, v in r.items() if k not in ("method",))


def test_resumed_run_keeps_finished_sets(tmp_path):
    r = recipe(tmp_path, [{"name": "dm", "iterations": 2}], baselines=False)
    first = run(r, log=lambda m: None, show_table=False)
    seen = []
    again = run(r, resume=True, log=seen.append, show_table=False)
    assert any("already done" in m for m in seen)
    assert again["students"]["dm"]["accuracy"] == first["students"]["dm"]["accuracy"]
