"""The quickstart recipe end to end at tiny size: run folder, summary, report, reload, teacher reuse."""
import json

import torch
import yaml

import distill
from distill.config import load_config


def test_quickstart_recipe_is_valid_and_students_are_10x_smaller():
    cfg = load_config("recipes/quickstart.yaml")
    from distill.models.io import build_model, count_parameters

    t = build_model(cfg.teacher.model.name, cfg.teacher.model.params, (64,), 10)
    s = build_model(cfg.student.model.name, cfg.student.model.params, (64,), 10)
    assert count_parameters(t) >= 10 * count_parameters(s)
    assert [m.name for m in cfg.methods] == ["scratch", "kd"]


def test_tiny_quickstart_end_to_end(tiny_recipe, tmp_path):
    logs = []
    summary = distill.run(tiny_recipe, log=logs.append, show_table=False)
    run_dir = tmp_path / "runs" / "tiny"
    assert summary["run_dir"] == str(run_dir)
    for f in ("config.yaml", "metrics.jsonl", "summary.json", "report.md", "plots/learning_curves.png",
              "plots/comparison.png", "plots/reliability.png", "student/model.safetensors", "student/config.json"):
        assert (run_dir / f).is_file(), f
    saved = json.loads((run_dir / "summary.json").read_text())
    assert set(saved["students"]) == {"scratch", "kd"}
    for m in [saved["teacher"], *saved["students"].values()]:
        assert 0 <= m["accuracy"] <= 100 and m["nll"] > 0 and m["params"] > 0 and m["latency_ms"] > 0
    assert saved["teacher"]["params"] > saved["students"]["kd"]["params"]
    assert saved["students"]["kd"]["accuracy"] > 20  # far above chance (10%) after 2 epochs
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["methods"][1]["params"]["divergence"] == "forward_kl"  # defaults written out

    student = distill.load_student(run_dir / "student")
    x = torch.randn(2, 64)
    assert student(x).shape == (2, 10)

    # a second run reuses the cached teacher and writes a fresh folder next to the first
    logs.clear()
    summary2 = distill.run(tiny_recipe, log=logs.append, show_table=False)
    assert any("reusing the cached teacher" in m for m in logs)
    assert summary2["run_dir"] == str(tmp_path / "runs" / "tiny-1")
    assert summary2["teacher"]["accuracy"] == summary["teacher"]["accuracy"]


def test_teacher_output_cache_in_a_run_matches_the_live_teacher(tiny_recipe):
    tiny_recipe["methods"] = [{"name": "kd"}]
    live = distill.run(tiny_recipe, show_table=False, log=lambda m: None)
    cached = distill.run(dict(tiny_recipe, teacher=dict(tiny_recipe["teacher"], cache_outputs=True)),
                         show_table=False, log=lambda m: None)
    # full-k cache: same loss up to the fp16 rounding of the cached logits
    assert abs(live["students"]["kd"]["accuracy"] - cached["students"]["kd"]["accuracy"]) <= 1.0


def test_cache_says_which_methods_run_the_live_teacher(tiny_recipe):
    tiny_recipe["methods"] = [{"name": "kd"}, {"name": "sp"}]
    tiny_recipe["teacher"]["cache_outputs"] = True
    logs: list[str] = []
    distill.run(tiny_recipe, show_table=False, log=logs.append)
    live = [m for m in logs if "runs the live teacher" in m]
    assert len(live) == 1 and live[0].startswith("student [sp]")  # kd reads the cache, sp needs features


def test_distiller_object_api():
    from torch.utils.data import DataLoader, TensorDataset

    from distill import Distiller
    from distill.data.digits import digits

    b = digits(layout="flat")
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    opt = torch.optim.Adam(teacher.parameters(), 3e-3)
    for _ in range(200):
        i = torch.randint(0, len(b.train), (64,))
        loss = torch.nn.functional.cross_entropy(teacher(b.train.x[i]), b.train.y[i])
        opt.zero_grad(), loss.backward(), opt.step()
    student = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    train = DataLoader(TensorDataset(b.train.x, b.train.y), batch_size=64)
    val = DataLoader(TensorDataset(b.test.x, b.test.y), batch_size=256)
    d = Distiller(teacher, student, method="kd", temperature=4.0, epochs=10, lr=1e-2)
    out = d.fit(train, val)
    assert out is student and not out.training
    assert len(d.history) == 10 and d.history[-1]["accuracy"] > 80
