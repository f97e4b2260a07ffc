"""The Python API: run a recipe, load a trained student, or distil in a notebook.

    import distill
    summary = distill.run("recipes/quickstart.yaml", overrides=["train.epochs=5"])
    student = distill.load_student("runs/quickstart/student")

    from distill import Distiller
    student = Distiller(teacher, student, method="kd", temperature=4.0).fit(train_loader, val_loader)
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from distill.config import RunConfig, load_config
from distill.errors import ConfigError
from distill.utils import atomic_write_text

# engine settings that may differ on resume
_VOLATILE = ("progress", "tensorboard", "trackers", "tracker_project", "tracker_init")


def _comparable(cfg: RunConfig) -> dict:
    d = cfg.model_dump(mode="json")
    for k in _VOLATILE:
        d.get("engine", {}).pop(k, None)
    return d


def prepare_run_dir(cfg: RunConfig, *, resume: bool, overwrite: bool) -> Path:
    """Pick the run folder: resume in place (config must match), overwrite, or a fresh `name-N`."""
    import shutil

    import yaml

    base = cfg.run_dir
    if resume:
        if not (base / "config.yaml").is_file():
            raise ConfigError(f"--resume: {base} has no config.yaml to resume from; run without --resume.")
        old = yaml.safe_load((base / "config.yaml").read_text())
        if old != _comparable(cfg):
            raise ConfigError(f"--resume: the recipe differs from the one {base} was started with "
                              f"({base / 'config.yaml'}); resume with the same recipe and overrides, or start a new run.")
        return base
    if overwrite and base.exists():
        shutil.rmtree(base)
    path, n = base, 1
    while path.exists() and any(path.iterdir()):
        path = base.with_name(f"{base.name}-{n}")
        n += 1
    path.mkdir(parents=True, exist_ok=True)
    return path


def run(recipe: str | os.PathLike | dict, overrides: Sequence[str] = (), *, resume: bool = False,
        overwrite: bool = False, log: Callable[[str], None] | None = None, show_table: bool = True) -> dict[str, Any]:
    """Run a recipe end to end. Returns the summary (also written to `<run dir>/summary.json`)."""
    import yaml

    from distill.registry import runners

    from distill.dist import is_main

    cfg = load_config(recipe, list(overrides))
    from distill.dist import world_size

    if os.environ.get("DISTILL_RUN_DIR"):  # a worker of `distill run --nproc N`: the launcher chose the folder
        run_dir = Path(os.environ["DISTILL_RUN_DIR"])
    elif world_size() > 1:  # started by torchrun / accelerate launch directly: every process uses output_dir/name
        run_dir = cfg.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        if is_main():
            atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(_comparable(cfg), sort_keys=False))
    else:
        run_dir = prepare_run_dir(cfg, resume=resume, overwrite=overwrite)
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(_comparable(cfg), sort_keys=False))
    cfg.engine._run_info = {"project": cfg.name, "group": run_dir.name, "config": _comparable(cfg)}
    log = log or (_console_log if is_main() else (lambda m: None))
    log(f"run folder: {run_dir}")
    try:
        summary = runners[cfg.family](cfg, run_dir=run_dir, log=log)
    except ConfigError:
        # an input error found only once the data was seen: leave no half-made folder behind
        if not resume and is_main() and {p.name for p in run_dir.iterdir()} <= {"config.yaml"}:
            import shutil

            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    summary["run_dir"] = str(run_dir)
    if show_table and cfg.family == "classifier" and is_main():
        from distill.report.classifier import print_table

        print_table(summary, title=f"{cfg.name}: teacher vs students (test set)")
        log(f"report: {run_dir / 'report.md'}")
    return summary


def launch(recipe: str, overrides: Sequence[str], nproc: int, *, resume: bool = False, overwrite: bool = False,
           extra_args: Sequence[str] = ()) -> int:
    """Run a recipe in `nproc` processes on this machine (torchrun; DDP over gloo on CPU, NCCL on GPUs).

    The recipe is validated and the run folder chosen here, once; every worker then runs the same
    runner in that folder. Returns the workers' exit code.
    """
    import socket
    import subprocess
    import sys

    import yaml

    cfg = load_config(recipe, list(overrides))
    run_dir = prepare_run_dir(cfg, resume=resume, overwrite=overwrite)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(_comparable(cfg), sort_keys=False))
    with socket.socket() as sock:  # a free loopback port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "distill.cli.main", "run", str(recipe),
           *overrides, *extra_args]
    env = {**os.environ, "DISTILL_RUN_DIR": str(run_dir)}
    return subprocess.run(cmd, env=env).returncode


def _console_log(msg: str) -> None:
    from rich.console import Console

    from rich.markup import escape

    Console(stderr=True).print(f"[dim]distill[/dim] {escape(msg)}", highlight=False)  # `[kd]` is text, not markup


def load_student(folder: str | os.PathLike, device: str = "cpu") -> nn.Module:
    """Load a student saved by a run (`runs/NAME/student`) in eval mode."""
    from distill.models.io import load_model

    return load_model(folder, device=device)


def _as_batch(b, offset: int) -> dict[str, torch.Tensor]:
    """A user's batch ((x, y), (x,), x or {"x", "y"[, "idx"]}) as the methods' dict; `idx` counts
    samples within the epoch when the loader gives none."""
    if isinstance(b, dict):
        x, y, idx = b["x"], b.get("y"), b.get("idx")
    elif isinstance(b, torch.Tensor):
        x, y, idx = b, None, None
    else:
        x, y, idx = b[0], (b[1] if len(b) > 1 else None), None
    y = torch.full((x.shape[0],), -1, dtype=torch.long) if y is None else torch.as_tensor(y).long()
    idx = torch.arange(offset, offset + x.shape[0]) if idx is None else torch.as_tensor(idx).long()
    return {"x": x, "y": y, "idx": idx}


class UserLoader:
    """Wraps a user's DataLoader (or any re-iterable of batches): each epoch iterates it afresh, so
    its shuffling and random augmentation are drawn anew; nothing is held in memory."""

    def __init__(self, loader: Iterable):
        self.loader = loader

    def set_epoch(self, epoch: int) -> None:
        for obj in (self.loader, getattr(self.loader, "sampler", None), getattr(self.loader, "batch_sampler", None)):
            if obj is not None and hasattr(obj, "set_epoch") and obj is not self:
                obj.set_epoch(epoch)
                return

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self):
        offset = 0
        for b in self.loader:
            batch = _as_batch(b, offset)
            offset += batch["x"].shape[0]
            yield batch


@torch.no_grad()
def _predict_loader(model: nn.Module, loader: Iterable, device) -> tuple[torch.Tensor, torch.Tensor]:
    from distill.models.outputs import logits_of

    was = model.training
    model.eval()
    zs, ys = [], []
    for b in UserLoader(loader):
        zs.append(logits_of(model(b["x"].to(device))).float().cpu())
        ys.append(b["y"])
    model.train(was)
    return torch.cat(zs), torch.cat(ys)


class Distiller:
    """Notebook-sized API over the same methods and engine the recipes use.

    `teacher` is an nn.Module (frozen here), `student` the model to train; `method` is a
    registered classifier method and `**params` its parameters (e.g. temperature, alpha). Any
    model works whose output is a tensor, a tuple (logits first) or an object with `.logits`
    (Hugging Face). Loaders yield (x, y) tuples or {"x", "y"} dicts; y = -1 marks an unlabeled
    sample. The train loader is iterated every epoch (fresh shuffles and augmentations).
    """

    def __init__(self, teacher: nn.Module | None, student: nn.Module, method: str = "kd", *,
                 epochs: int = 10, lr: float = 1e-3, optimizer: str = "adam", precision: str = "fp32",
                 device: str = "auto", seed: int = 0, **params: Any):
        from distill.config import EngineConfig, OptimizerConfig, TrainConfig
        from distill.registry import methods
        from distill.teacher import Teacher

        entry = methods.get(method, "classifier", where="method")
        params = entry.validate(params, "params")
        self.teacher = Teacher(teacher) if teacher is not None else None
        self.student = student
        self.method = entry.builder(student, self.teacher if entry.builder.needs_teacher else None, **params)
        self.train_cfg = TrainConfig(epochs=epochs, optimizer=OptimizerConfig(name=optimizer, lr=lr))
        self.engine_cfg = EngineConfig(precision=precision, device=device, progress=False)
        self.seed = seed
        self.history: list[dict] = []

    def fit(self, train_loader: Iterable, val_loader: Iterable | None = None) -> nn.Module:
        """Train the student; returns it (in eval mode). Validation accuracy per epoch is in `.history`.
        The method's hooks are removed from both models when it returns."""
        from distill.engine import Engine
        from distill.eval.metrics import classification_metrics
        from distill.families.classifier.runner import train_phase

        device = Engine(self.engine_cfg, None, seed=self.seed).device
        if self.teacher is not None:
            self.teacher.to(device)

        def eval_fn():
            if val_loader is None:
                return {}
            z, y = _predict_loader(self.student, val_loader, device)
            keep = y >= 0
            return classification_metrics(z[keep], y[keep])

        engine = train_phase(self.method, None, None, self.train_cfg, self.engine_cfg, batch_size=0,
                             seed=self.seed, out_dir=None, eval_fn=eval_fn, loader=UserLoader(train_loader))
        self.history = engine.history
        return self.student.eval()
