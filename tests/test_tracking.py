"""engine.trackers: every phase of a run opens one tracker run through accelerate's tracker
interface, stores the recipe, receives every metrics.jsonl line at its step, and is finished."""
import json

import pytest

pytest.importorskip("accelerate")
from accelerate.tracking import GeneralTracker, register_tracker_class  # noqa: E402

import distill  # noqa: E402
from distill.errors import ConfigError, DistillError  # noqa: E402

RUNS: list["MemoryTracker"] = []


class MemoryTracker(GeneralTracker):
    """A tracker that keeps what it is given (accelerate's custom-tracker interface)."""
    name = "memory"
    requires_logging_directory = False
    main_process_only = True

    def __init__(self, project: str, **kw):
        super().__init__()
        self.project, self.kw = project, kw
        self.config, self.logged, self.started, self.finished = None, [], False, False
        RUNS.append(self)

    @property
    def tracker(self):
        return self

    def start(self):
        self.started = True

    def store_init_configuration(self, values):
        self.config = values

    def log(self, values, step=None, **kwargs):
        self.logged.append((step, dict(values)))

    def finish(self):
        self.finished = True


register_tracker_class(MemoryTracker)


def _recipe(tmp_path, **engine):
    return {"name": "tracked", "family": "classifier", "output_dir": str(tmp_path), "cache_dir": str(tmp_path / "cache"),
            "data": {"name": "digits", "params": {"layout": "flat"}, "batch_size": 128},
            "teacher": {"model": {"name": "mlp", "params": {"hidden": [32]}}, "train": {"epochs": 1}},
            "student": {"model": {"name": "mlp", "params": {"hidden": [8]}}},
            "methods": [{"name": "scratch"}, {"name": "kd", "params": {"temperature": 2.0}}],
            "train": {"epochs": 2}, "engine": {"device": "cpu", "progress": False, "log_every": 2, **engine}}


def test_every_phase_gets_a_tracker_run(tmp_path):
    RUNS.clear()
    s = distill.run(_recipe(tmp_path, trackers=["memory"], tracker_init={"memory": {"tag": "x"}}), show_table=False)
    phases = [r.config["phase"] for r in RUNS]
    assert phases == ["teacher", "scratch", "kd"], phases
    run_dir = s["run_dir"]
    for r in RUNS:
        assert r.project == "tracked" and r.kw == {"tag": "x"} and r.started and r.finished
        assert r.config["run"] == run_dir.rsplit("/", 1)[-1] and r.config["name"] == "tracked"  # the recipe, flattened
        assert r.config["train.epochs"] == 2 and r.config["engine.device"] == "cpu"
    # what each student's tracker got is what the phase wrote to the run's metrics.jsonl, at the same steps
    lines = [json.loads(x) for x in open(f"{run_dir}/metrics.jsonl")]
    for r in RUNS:
        assert any(k.startswith("loss/") for _, v in r.logged for k in v)
        if r.config["phase"] == "teacher":
            continue
        mine = [x for x in lines if x["phase"] == r.config["phase"]]
        assert mine and len(r.logged) == len(mine)
        for (step, values), line in zip(r.logged, mine):
            assert step == line["step"] and set(values) <= set(line)
            assert all(line[k] == pytest.approx(v, abs=1e-6) for k, v in values.items())  # the file rounds to 6 places
        assert any(k.startswith("eval/") for _, v in r.logged for k in v)


def test_tracker_names_are_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"engine.trackers.*unknown tracker 'wandbb'.*Did you mean: wandb"):
        distill.run(_recipe(tmp_path, trackers=["wandbb"]), show_table=False)


def test_a_tracker_that_is_not_installed_says_how_to_install_it(tmp_path):
    from accelerate.utils import is_wandb_available

    if is_wandb_available():
        pytest.skip("wandb is installed here")
    with pytest.raises(DistillError, match=r"engine.trackers: wandb is not installed; `pip install wandb`"):
        distill.run(_recipe(tmp_path, trackers=["wandb"]), show_table=False)


def test_tensorboard_files(tmp_path):
    pytest.importorskip("tensorboard")
    s = distill.run(_recipe(tmp_path, tensorboard=True), show_table=False)
    assert list((tmp_path / s["run_dir"].rsplit("/", 1)[-1] / "students" / "kd" / "tensorboard").rglob("events.*"))
