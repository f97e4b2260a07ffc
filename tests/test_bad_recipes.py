"""Property test: malformed recipes always give exit code 2, a message naming the field, no
traceback, and no run folder."""
import string

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from distill.cli.main import app

BASE = {
    "name": "bad", "family": "classifier",
    "data": {"name": "digits", "params": {"layout": "flat"}, "batch_size": 32},
    "teacher": {"model": {"name": "mlp", "params": {"hidden": [8]}}, "train": {"epochs": 1}},
    "student": {"model": {"name": "mlp", "params": {"hidden": [4]}}},
    "methods": [{"name": "scratch"}, {"name": "kd"}],
    "train": {"epochs": 1},
    "engine": {"device": "cpu", "progress": False},
}

ident = st.text(string.ascii_lowercase + "_", min_size=3, max_size=12)
not_a_number = st.text(string.ascii_letters, min_size=1, max_size=8).filter(
    lambda s: s.lower() not in ("true", "false", "yes", "no", "on", "off", "null", "nan", "inf", "y", "n"))

# (field that the message must name, override value)
mutations = st.one_of(
    st.tuples(st.just("train.epochs"), st.one_of(not_a_number, st.integers(max_value=-1))),
    st.tuples(st.just("data.batch_size"), st.integers(max_value=0)),
    st.tuples(st.just("engine.grad_accum"), st.integers(max_value=0)),
    st.tuples(st.just("train.optimizer.lr"), st.floats(max_value=0, allow_nan=False)),
    st.tuples(st.just("engine.precision"), not_a_number),
    st.tuples(st.just("methods.1.params.temperature"), st.one_of(not_a_number, st.floats(max_value=0, allow_nan=False))),
    st.tuples(st.just("methods.1.params.alpha"), st.floats(min_value=1.001, max_value=1e6)),
    st.tuples(st.just("data.params.test_fraction"), st.floats(min_value=1, max_value=10)),
    st.tuples(ident.map(lambda k: f"train.{k}"), st.integers()),
    st.tuples(ident.map(lambda k: f"engine.{k}"), st.integers()),
    st.tuples(ident.map(lambda k: f"methods.1.params.{k}"), st.integers()),
    st.tuples(st.just("methods.0.name"), ident),
    st.tuples(st.just("student.model.name"), ident),
    st.tuples(st.just("teacher.model.name"), ident),
    st.tuples(st.just("data.name"), ident),
    st.tuples(st.just("teacher.checkpoint"), ident.map(lambda s: f"/nonexistent/{s}")),
    st.tuples(st.just("student.model.params.hidden"), not_a_number),
    st.tuples(st.just("student.model"), st.just("convnet")),  # shape-incompatible: convnet on flat data
)

REAL_KEYS = {"epochs", "max_steps", "optimizer", "schedule", "device", "precision", "grad_accum", "clip_grad_norm",
             "deterministic", "eval_every", "checkpoint_every", "keep_checkpoints", "log_every", "tensorboard",
             "progress", "nan_policy", "max_bad_steps", "temperature", "alpha", "divergence"}
REAL_NAMES = {"scratch", "kd", "mlp", "convnet", "digits"}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations)
def test_malformed_recipe_exits_2_and_names_the_field(tmp_path_factory, mutation):
    field, value = mutation
    last = field.split(".")[-1]
    if last in REAL_KEYS and field.count(".") == 1 and field.split(".")[0] in ("train", "engine"):
        return  # the generator hit a real key
    if isinstance(value, str) and value in REAL_NAMES:
        return
    tmp = tmp_path_factory.mktemp("bad")
    recipe = dict(BASE, output_dir=str(tmp / "runs"), cache_dir=str(tmp / "cache"))
    path = tmp / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    if field == "student.model":
        overrides = ["student.model.name=convnet"]
        field = "student.model"
    else:
        overrides = [f"{field}={value}"]
    result = CliRunner().invoke(app, ["run", str(path), *overrides], terminal_width=400)
    text = result.output
    assert result.exit_code == 2, (overrides, text)
    assert "Traceback" not in text, text
    flat = " ".join(text.split())
    assert field in flat.replace(" ", "") or field in flat, (field, text)
    runs = tmp / "runs"
    assert not runs.exists() or not any(runs.iterdir()), list(runs.rglob("*"))
