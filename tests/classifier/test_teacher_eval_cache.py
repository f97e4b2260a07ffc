"""The teacher's test/validation logits are kept in cache_dir/teacher_eval: a second run with the
same teacher and data reads them (same metrics, no second prediction); other data, or a damaged
cache, makes it predict again."""
import json

import distill
from distill.families.classifier import runner


def _recipe(tmp_path, name="a", test_fraction=None, val_fraction=0.1):
    params = {"layout": "flat"}
    if test_fraction:
        params["test_fraction"] = test_fraction
    return {"name": name, "family": "classifier", "output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "c"),
            "data": {"name": "digits", "params": params, "batch_size": 64},
            "teacher": {"model": {"name": "mlp", "params": {"hidden": [32]}}, "train": {"epochs": 1}},
            "student": {"model": {"name": "mlp", "params": {"hidden": [8]}}},
            "methods": [{"name": "kd"}], "train": {"epochs": 1},
            "engine": {"device": "cpu", "progress": False}, "eval": {"latency_runs": 1, "val_fraction": val_fraction}}


def test_teacher_logits_are_read_back(tmp_path, monkeypatch):
    calls = []
    real = runner.evaluate
    monkeypatch.setattr(runner, "evaluate", lambda model, *a, **k: calls.append(type(model).__name__) or real(model, *a, **k))
    first = distill.run(_recipe(tmp_path, "a"), show_table=False, log=lambda m: None)
    n_first = len(calls)
    logs: list[str] = []
    second = distill.run(_recipe(tmp_path, "b"), show_table=False, log=logs.append)
    assert any("teacher evaluation: logits read from" in x for x in logs), logs
    assert len(calls) - n_first == n_first - 1  # the student was evaluated, the teacher was not
    for key in ("accuracy", "val_accuracy", "nll", "ece", "params"):
        assert second["teacher"][key] == first["teacher"][key], key
    folders = list((tmp_path / "c" / "teacher_eval").iterdir())
    assert len(folders) == 1
    meta = json.loads((folders[0] / "meta.json").read_text())
    assert meta["val"] is not None and meta["test"]

    # other test data: predicted again, in its own folder
    logs.clear()
    distill.run(_recipe(tmp_path, "c", test_fraction=0.3), show_table=False, log=logs.append)
    assert not any("logits read from" in x for x in logs)
    assert len(list((tmp_path / "c" / "teacher_eval").iterdir())) == 2

    # a damaged cache is not trusted: predicted again and rewritten
    (folders[0] / "logits.safetensors").write_bytes(b"broken")
    logs.clear()
    third = distill.run(_recipe(tmp_path, "d"), show_table=False, log=logs.append)
    assert any("predicting again" in x for x in logs), logs
    assert third["teacher"]["accuracy"] == first["teacher"]["accuracy"]
    logs.clear()
    distill.run(_recipe(tmp_path, "e"), show_table=False, log=logs.append)
    assert any("logits read from" in x for x in logs)


def test_split_key_follows_the_content():
    import torch

    from distill.data.base import ArrayDataset

    x, y = torch.zeros(20, 4), torch.zeros(20, dtype=torch.long)
    a = runner.split_key(ArrayDataset(x, y))
    x2 = x.clone()
    x2[3, 1] = 1.0
    assert runner.split_key(ArrayDataset(x2, y)) != a
    y2 = y.clone()
    y2[0] = 1
    assert runner.split_key(ArrayDataset(x, y2)) != a
    assert runner.split_key(ArrayDataset(x.clone(), y.clone())) == a
    assert runner.split_key(None) is None
