"""`distill bench`: grid, baselines, resume, outputs, dry run; family-agnostic aggregation."""
from __future__ import annotations

import csv
import json

import pytest
import yaml

from distill import bench as B


def write_suite(tmp_path, methods, seeds=(0, 1)):
    recipe = {
        "name": "tiny", "family": "classifier", "cache_dir": str(tmp_path / "cache"),
        "data": {"name": "digits", "params": {"layout": "flat"}, "batch_size": 128},
        "teacher": {"model": {"name": "mlp", "params": {"hidden": [32]}}, "train": {"epochs": 2}},
        "student": {"model": {"name": "mlp", "params": {"hidden": [8]}}},
        "train": {"epochs": 1, "optimizer": {"lr": 0.01}},
        "engine": {"device": "cpu", "progress": False}, "eval": {"latency_runs": 1},
    }
    suite = {"name": "t", "output_dir": str(tmp_path / "bench"), "seeds": list(seeds), "recipe": recipe,
             "recipes": [{"label": "mlp8"}, {"label": "mlp4", "overrides": ["student.model.params={hidden: [4]}"]}],
             "methods": methods}
    p = tmp_path / "suite.yaml"
    p.write_text(yaml.safe_dump(suite))
    return p


def test_grid_adds_baselines_and_respects_only(tmp_path):
    s = B.load_suite(write_suite(tmp_path, [{"name": "dist", "only": ["mlp8"]}, {"name": "kd", "params": {"alpha": 0.5}}]))
    assert [m.label for m in s.methods] == ["scratch", "dist", "kd"]  # the suite's own kd replaces the default one
    keys = [c.key for c in s.cells()]
    assert len(keys) == 2 * 2 * 2 + 2  # dist only on mlp8
    assert "mlp4__dist__s0" not in keys
    ov = B.cell_overrides(s, next(c for c in s.cells() if c.method.name == "dist"))
    assert ov[-1].startswith("methods=") and json.loads(ov[-1].split("=", 1)[1])[0]["name"] == "dist"
    assert "student.model.params={hidden: [4]}" in B.cell_overrides(s, [c for c in s.cells() if c.recipe.label == "mlp4"][0])


def test_run_resume_and_outputs(tmp_path, monkeypatch):
    path = write_suite(tmp_path, [])
    s = B.load_suite(path)
    s.recipes = s.recipes[:1]
    out = B.run_suite(s, log=lambda m: None, command="distill bench suite.yaml")
    rows = list(csv.DictReader(open(s.output_dir / "results.csv")))
    assert len(rows) == 2 * 2 and {r["method"] for r in rows} == {"scratch", "kd"}  # baselines always run
    for r in rows:
        assert 0 <= float(r["last"]) <= 100 and float(r["best"]) >= float(r["last"]) - 1e-9
    md = (s.output_dir / "results.md").read_text()
    assert "+-" in md and "vs scratch" in md and "vs kd" in md and "distill bench suite.yaml" in md
    assert (s.output_dir / "results.png").stat().st_size > 1000
    # mean over seeds in the table equals the mean of the csv rows
    kd = [float(r["last"]) for r in rows if r["method"] == "kd"]
    assert f"{sum(kd) / 2:.2f} +- " in md
    # resume: finished cells are skipped; a deleted cell is the only one run again
    calls = []
    B.cell_path(s, s.cells()[0]).unlink()

    def fake(suite, cell, log):
        calls.append(cell.key)
        rec = dict(out["cells"][0], seed=cell.seed, method=cell.method.label)
        B.cell_path(suite, cell).write_text(json.dumps(rec))
        return rec

    monkeypatch.setattr(B, "run_cell", fake)
    B.run_suite(s, log=lambda m: None)
    assert calls == [s.cells()[0].key]
    # the finished cells carry what they were computed from; a changed suite makes them stale
    assert B.load_cells(s).keys() == {c.key for c in s.cells()}
    calls.clear()
    s.overrides.append("train.epochs=2")
    stale: list[str] = []
    assert B.load_cells(s, stale) == {} and len(stale) == len(s.cells())
    assert B.dry_run_text(s).count("[stale]") == len(s.cells())
    logs: list[str] = []
    B.run_suite(s, log=logs.append)
    assert calls == [c.key for c in s.cells()] and any("computed from another version" in m for m in logs)


def test_dry_run_lists_cells_and_estimate(tmp_path):
    s = B.load_suite(write_suite(tmp_path, [{"name": "dist"}], seeds=(0, 1, 2)))
    text = B.dry_run_text(s)
    assert text.count("[todo]") == 2 * 3 * 3 and "estimated" in text


def test_aggregation_is_family_agnostic(tmp_path):
    """Any summary with primary_metric/students works: here a made-up family scored by 'bpb'."""
    s = B.Suite(name="x", path=tmp_path, output_dir=tmp_path, seeds=[0, 1], recipes=[B.Recipe("r", {}, [])],
                methods=[B.Method("scratch", "scratch"), B.Method("kd", "kd"), B.Method("m", "m")], overrides=[],
                baselines=["scratch", "kd"])
    res = [{"recipe": "r", "method": m, "method_name": m, "seed": sd, "primary_metric": "bpb", "last": v + sd,
            "best": v + sd, "teacher": 1.0, "wall_s": 1.0, "metrics": {"bpb": v + sd}}
           for m, v in (("scratch", 3.0), ("kd", 2.0), ("m", 1.0)) for sd in (0, 1)]
    rows = {r["method"]: r for r in B.aggregate(s, res)}
    assert rows["m"]["last_mean"] == pytest.approx(1.5) and rows["m"]["last_std"] == pytest.approx(0.7071, abs=1e-4)
    B.write_outputs(s, res)
    md = (tmp_path / "results.md").read_text()
    assert "bpb last" in md and "| m | 2 | 1.50 +- 0.71" in md and "-2.00" in md


def test_cli_dry_run(tmp_path):
    from typer.testing import CliRunner

    from distill.cli.main import app

    r = CliRunner().invoke(app, ["bench", str(write_suite(tmp_path, [])), "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "cells to run" in r.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("seeds: [0]\nmethodz: []\n")
    r = CliRunner().invoke(app, ["bench", str(bad)])
    assert r.exit_code == 2 and "methodz" in r.output


def test_shards_split_the_grid_and_the_last_writes_every_cell(tmp_path, monkeypatch):
    s = B.load_suite(write_suite(tmp_path, [{"name": "dist"}], seeds=(0, 1, 2)))
    ran: list[tuple[int, str]] = []

    def fake(shard):
        def run_cell(suite, cell, log):
            ran.append((shard, cell.key))
            rec = {"recipe": cell.recipe.label, "method": cell.method.label, "method_name": cell.method.name,
                   "seed": cell.seed, "primary_metric": "accuracy", "last": 50.0 + cell.seed, "best": 51.0 + cell.seed,
                   "teacher": 90.0, "wall_s": 1.0, "metrics": {}, "fingerprint": B.cell_fingerprint(suite, cell)}
            B.cell_path(suite, cell).parent.mkdir(parents=True, exist_ok=True)
            B.cell_path(suite, cell).write_text(json.dumps(rec))
            return rec
        return run_cell

    keys = [c.key for c in s.cells()]
    monkeypatch.setattr(B, "run_cell", fake(1))
    first = B.run_suite(s, log=lambda m: None, shard=B.parse_shard("1/2"))
    assert [k for _, k in ran] == keys[0::2] and len(first["cells"]) == len(keys[0::2])
    monkeypatch.setattr(B, "run_cell", fake(2))
    second = B.run_suite(s, log=lambda m: None, shard=B.parse_shard("2/2"))
    assert [k for sh, k in ran if sh == 2] == keys[1::2]
    assert sorted(c["seed"] for c in second["cells"]) == sorted(c.seed for c in s.cells())  # the whole grid
    rows = list(csv.DictReader(open(s.output_dir / "results.csv")))
    assert len(rows) == len(keys)
    for bad in ("0/2", "3/2", "a/b", "2"):
        with pytest.raises(B.ConfigError, match="--shard"):
            B.parse_shard(bad)


def _fake_run_cell(calls):
    def run_cell(suite, cell, log):
        calls.append(cell.key)
        rec = {"recipe": cell.recipe.label, "method": cell.method.label, "method_name": cell.method.name,
               "seed": cell.seed, "primary_metric": "accuracy", "last": 50.0, "best": 51.0, "teacher": 90.0,
               "wall_s": 1.0, "metrics": {}, "fingerprint": B.cell_fingerprint(suite, cell), "code": B.code_identity()}
        B.cell_path(suite, cell).parent.mkdir(parents=True, exist_ok=True)
        B.cell_path(suite, cell).write_text(json.dumps(rec))
        return rec
    return run_cell


def test_fingerprint_changes_with_the_package_version_and_the_commit(tmp_path, monkeypatch):
    import distill

    s = B.load_suite(write_suite(tmp_path, []))
    cell = s.cells()[0]
    monkeypatch.setattr(B, "package_git_state", lambda: {"commit": "a" * 40, "dirty": False})
    base = B.cell_fingerprint(s, cell)
    assert B.cell_fingerprint(s, cell) == base  # deterministic
    monkeypatch.setattr(distill, "__version__", "0.0.1-older")
    assert B.cell_fingerprint(s, cell) != base
    monkeypatch.undo()
    monkeypatch.setattr(B, "package_git_state", lambda: {"commit": "b" * 40, "dirty": False})
    assert B.cell_fingerprint(s, cell) != base
    # the same commit with uncommitted changes to the package is other code, and so are two different edits
    monkeypatch.setattr(B, "package_git_state", lambda: {"commit": "a" * 40, "dirty": True, "diff": "1234"})
    dirty = B.cell_fingerprint(s, cell)
    monkeypatch.setattr(B, "package_git_state", lambda: {"commit": "a" * 40, "dirty": True, "diff": "5678"})
    assert len({base, dirty, B.cell_fingerprint(s, cell)}) == 3
    # outside a git checkout the version alone identifies the code
    monkeypatch.setattr(B, "package_git_state", lambda: None)
    assert B.code_identity() == {"version": distill.__version__}


def test_cells_from_older_code_are_run_again_and_the_table_names_the_code(tmp_path, monkeypatch):
    s = B.load_suite(write_suite(tmp_path, []))
    s.recipes = s.recipes[:1]
    calls: list[str] = []
    monkeypatch.setattr(B, "run_cell", _fake_run_cell(calls))
    monkeypatch.setattr(B, "package_git_state", lambda: {"commit": "a" * 40, "dirty": False})
    B.run_suite(s, log=lambda m: None)
    assert len(calls) == len(s.cells())
    md = (s.output_dir / "results.md").read_text()
    assert "a" * 12 in md and B.code_identity()["version"] in md
    # the same suite with newer code: nothing is reused silently
    calls.clear()
    monkeypatch.setattr(B, "package_git_state", lambda: {"commit": "c" * 40, "dirty": False})
    assert B.load_cells(s) == {}
    assert B.dry_run_text(s).count("[stale]") == len(s.cells())
    logs: list[str] = []
    B.run_suite(s, log=logs.append)
    assert calls == [c.key for c in s.cells()] and any("code" in m and "again" in m for m in logs)
    md = (s.output_dir / "results.md").read_text()
    assert "c" * 12 in md and "a" * 12 not in md
    rec = json.loads(B.cell_path(s, s.cells()[0]).read_text())
    assert rec["code"]["commit"] == "c" * 40


def test_git_state_of_a_checkout(tmp_path):
    import shutil
    import subprocess

    if shutil.which("git") is None:
        pytest.skip("git not installed")
    assert B.git_state(tmp_path) is None  # not a checkout
    repo = tmp_path / "repo"
    pkg = repo / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "m.py").write_text("x = 1\n")
    (repo / "README").write_text("doc\n")

    def git(*a):
        subprocess.run(["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t", *a], check=True,
                       capture_output=True)

    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "one")
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    clean = B.git_state(pkg)
    assert clean == {"commit": head, "dirty": False}
    (repo / "README").write_text("other doc\n")  # outside the package: the code is unchanged
    assert B.git_state(pkg) == clean
    (pkg / "m.py").write_text("x = 2\n")
    edit1 = B.git_state(pkg)
    assert edit1["commit"] == head and edit1["dirty"] and edit1["diff"]
    (pkg / "m.py").write_text("x = 3\n")
    assert B.git_state(pkg)["diff"] != edit1["diff"]
    (pkg / "m.py").write_text("x = 1\n")
    (pkg / "new.py").write_text("y = 1\n")  # an untracked module is a change too
    assert B.git_state(pkg)["dirty"]
    ignored = repo / "ignored"
    ignored.mkdir()
    (ignored / "m.py").write_text("x = 1\n")
    (repo / ".gitignore").write_text("ignored/\n")
    assert B.git_state(ignored) is None  # a copy the checkout does not track (e.g. installed into a venv)
