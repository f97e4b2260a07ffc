"""Experiment tracking through accelerate's trackers (TensorBoard, W&B, MLflow, Comet, Aim,
ClearML, DVCLive, SwanLab, Trackio): one tracker run per training phase, on the main process.

Each phase (the teacher, each method) opens one run of every tracker in `engine.trackers`, named
after the phase, in the project `engine.tracker_project` (default: the recipe's name) and grouped by
the run folder's name. The run's recipe goes in as its configuration (flattened to dotted keys),
every line the engine writes to metrics.jsonl goes in as scalars at its optimiser step, and the run
is finished with the phase. Trackers that write files (TensorBoard, Aim) write under the phase's
folder; the others go where their own settings send them (`WANDB_MODE=offline`, `MLFLOW_TRACKING_URI`,
...), with `engine.tracker_init.<name>` passed to them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from distill.errors import DistillError

BUILT_IN = ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab", "trackio")
PACKAGES = {"comet_ml": "comet-ml", "tensorboard": "tensorboard"}


def known_trackers() -> list[str]:
    """accelerate's tracker names, with any registered by `accelerate.tracking.register_tracker_class`."""
    try:
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS
    except ImportError:
        return list(BUILT_IN)
    return list(dict.fromkeys([*BUILT_IN, *LOGGER_TYPE_TO_CLASS]))


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"a.b": value} with values trackers accept (numbers, strings, booleans)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (bool, int, float, str)):
            out[key] = v
        else:
            out[key] = str(v)
    return out


def _installed(name: str) -> bool:
    from accelerate import utils

    check = getattr(utils, f"is_{name}_available", None)
    return check is None or bool(check())


class Trackers:
    """The open tracker runs of one phase."""

    def __init__(self, names: list[str], *, project: str, phase: str, group: str, out_dir: Path | None,
                 config: dict[str, Any], init_kwargs: dict[str, dict[str, Any]]):
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        self.trackers = []
        for name in names:
            if name not in LOGGER_TYPE_TO_CLASS:
                raise DistillError(f"engine.trackers: {name!r} is not a tracker accelerate knows; allowed: "
                                   f"{', '.join(known_trackers())}.")
            if not _installed(name):
                raise DistillError(f"engine.trackers: {name} is not installed; `pip install {PACKAGES.get(name, name)}` "
                                   "or remove it from engine.trackers.")
            cls = LOGGER_TYPE_TO_CLASS[name]
            kw = dict(init_kwargs.get(name, {}))
            folder = (out_dir if out_dir is not None else Path(".")) / name
            if name == "tensorboard":
                tracker = cls(phase, folder, **kw)
            elif name == "wandb":
                tracker = cls(project, **{"name": phase, "group": group, **kw})
            elif name == "mlflow":
                tracker = cls(**{"experiment_name": project, "run_name": f"{group}/{phase}", **kw})
            elif getattr(cls, "requires_logging_directory", False):
                tracker = cls(project, folder, **kw)
            else:
                tracker = cls(project, **kw)
            try:
                tracker.start()
                tracker.store_init_configuration({"phase": phase, "run": group, **flatten(config)})
            except Exception as e:  # noqa: BLE001 - the tracker's own message, with the field that asked for it
                self.finish()
                raise DistillError(f"engine.trackers: {name} could not start a run: {type(e).__name__}: {e}") from e
            self.trackers.append(tracker)

    def log(self, values: dict[str, Any], step: int) -> None:
        scalars = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if scalars:
            for t in self.trackers:
                t.log(scalars, step=step)

    def finish(self) -> None:
        for t in self.trackers:
            t.finish()
        self.trackers = []
