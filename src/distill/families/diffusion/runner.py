"""The diffusion family's run: a many-step teacher (trained once, cached under cfg.cache_dir),
then one student per method, each evaluated at every step count of `eval.steps` beside the
teacher at its full step count and the teacher run at that same step count. Distances are to
fresh data and to the teacher's full-step samples (same noise); summary.json, report.md, plots.
Training batches carry the data's labels ("y", when it has them) and the optimiser step ("step").
With a class-conditional teacher on labelled data the table's samples are unconditional (null
class) and summary.json adds the class-conditional distances (swd_cond@k, swd_cond_teacher@k:
every model sampled under the reference points' labels).
"""
from __future__ import annotations

import copy
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from distill.config import TrainConfig
from distill.engine import Engine
from distill.errors import ConfigError
from distill.eval.distributions import mmd, sliced_wasserstein, straightness
from distill.families.diffusion.base import DiffusionContext, DiffusionMethod
from distill.families.diffusion.config import DiffusionMethodConfig, DiffusionRunConfig
from distill.families.diffusion.lora import add_lora, merge_lora, save_lora
from distill.families.diffusion.process import Process, ddim_sample
from distill.families.diffusion.unet import conditioning
from distill.models.io import count_parameters
from distill.registry import datasets, methods, models, register_runner
from distill.teacher import Teacher
from distill.utils import atomic_torch_save, atomic_write_text, seed_everything


class StreamLoader:
    """`steps` batches {"x0": data (B, D), "z": noise (B, D)} from a generator seeded by (seed, epoch);
    with "y": labels (B,) too when the source has them (`sample_labeled`; the same draws as `sample`)."""

    def __init__(self, source, batch_size: int, steps: int, seed: int):
        self.source, self.batch_size, self.steps, self.seed, self.epoch = source, batch_size, steps, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1000003 + self.epoch)
        labeled = hasattr(self.source, "sample_labeled")
        for _ in range(self.steps):
            if labeled:
                x0, y = self.source.sample_labeled(self.batch_size, g)
                yield {"x0": x0, "z": torch.randn(x0.shape, generator=g), "y": y}
            else:
                x0 = self.source.sample(self.batch_size, g)
                yield {"x0": x0, "z": torch.randn(x0.shape, generator=g)}


class DenoisingLoss(nn.Module):
    """The teacher's own objective: |net(x_t, t) - target|^2 with t ~ U(t_min, 1) (flow matching for
    param=velocity, DDPM's simple loss for param=eps). With label_drop set, a class-conditional net is
    trained on the batch's labels "y", each dropped to the null class with that probability, so that one
    net gives both the conditional and the unconditional output (classifier-free guidance)."""

    def __init__(self, net: nn.Module, process: Process, param: str, label_drop: float | None = None):
        super().__init__()
        self.net, self.process, self.param, self.label_drop = net, process, param, label_drop

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        x0, z = batch["x0"], batch["z"]
        t = 1e-3 + (1 - 1e-3) * torch.rand(x0.shape[0], device=x0.device)
        y = None
        if self.label_drop is not None:
            drop = torch.rand(x0.shape[0], device=x0.device) < self.label_drop
            y = torch.where(drop, torch.full_like(batch["y"], self.net.num_classes), batch["y"])
        with conditioning(y):
            out = self.net(self.process.noisy(x0, z, t), t)
        return {"denoise": ((out - self.process.target(x0, z, self.param)) ** 2).flatten(1).sum(1).mean()}


def fit(objective: nn.Module, params, source, train: TrainConfig, cfg: DiffusionRunConfig, *, seed: int,
        out_dir: Path | None, name: str, weights: dict[str, float] | None = None) -> Engine:
    """Optimise `params` for train.max_steps optimiser steps (train.epochs * 100 when max_steps is unset),
    each of engine.grad_accum micro-batches."""
    steps = train.max_steps or train.epochs * 100
    engine = Engine(cfg.engine, out_dir, seed=seed, total_steps=steps, name=name)
    objective.to(engine.device)
    micro = steps * cfg.engine.grad_accum      # micro-batches for `steps` optimiser steps
    loader = StreamLoader(source, cfg.data.batch_size, micro, seed)
    # "step": optimiser steps done so far, the same for every micro-batch of one accumulation
    # window, so that methods do their per-step work (EMA, fake-score updates) once per step
    engine.fit(objective, loader, train.model_copy(update={"epochs": 1, "max_steps": steps}), weights=weights,
               params=params, batch_hook=lambda batch: {**batch, "step": engine.step_count})
    return engine


def build_net(comp, dim: int) -> nn.Module:
    return models.get(comp.name, "diffusion").builder(dim=dim, **comp.params)


def teacher_key(cfg: DiffusionRunConfig) -> str:
    t = cfg.teacher
    blob = json.dumps({"data": cfg.data.model_dump(mode="json"), "model": t.model.model_dump(mode="json"),
                       "process": [t.process, t.param, t.beta_min, t.beta_max], "seed": t.seed,
                       "train": t.train.model_dump(mode="json"), "format": 1,
                       **({"labels": t.label_drop} if t.labels else {})}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_or_train_teacher(cfg: DiffusionRunConfig, source, process: Process, log) -> tuple[nn.Module, dict]:
    """The teacher for this recipe, from the cache when one was trained with the same settings."""
    folder = Path(cfg.cache_dir) / "diffusion_teachers" / f"{cfg.data.params.get('name', cfg.data.name)}-{teacher_key(cfg)}"
    net = build_net(cfg.teacher.model, source.dim)
    if (folder / "teacher.pt").is_file() and (folder / "info.json").is_file():
        net.load_state_dict(torch.load(folder / "teacher.pt", weights_only=True))
        info = json.loads((folder / "info.json").read_text())
        log(f"teacher: cached {folder}")
        return net, info
    log(f"teacher: training {cfg.teacher.model.name} ({cfg.teacher.process}, {cfg.teacher.param}) "
        f"for {cfg.teacher.train.max_steps} steps")
    seed_everything(cfg.teacher.seed)
    t0 = time.perf_counter()
    label_drop = None
    if cfg.teacher.labels:
        if getattr(net, "num_classes", None) is None or not hasattr(source, "sample_labeled"):
            raise ConfigError("teacher.labels: needs a class-conditional teacher.model (num_classes) and a data set "
                              f"with labels (given {cfg.teacher.model.name} on {cfg.data.name})")
        label_drop = cfg.teacher.label_drop
    objective = DenoisingLoss(net, process, cfg.teacher.param, label_drop)
    fit(objective, net.parameters(), source, cfg.teacher.train, cfg, seed=cfg.teacher.seed, out_dir=None, name="teacher")
    info = {"train_s": round(time.perf_counter() - t0, 2), "params": count_parameters(net), "key": teacher_key(cfg)}
    net.cpu()
    atomic_torch_save(net.state_dict(), folder / "teacher.pt")
    atomic_write_text(folder / "info.json", json.dumps(info))
    return net, info


def sample_metrics(x: Tensor, ref: Tensor, teacher_ref: Tensor | None, cfg: DiffusionRunConfig) -> dict[str, float]:
    m = {"swd": sliced_wasserstein(x, ref, cfg.eval.projections), "mmd": mmd(x[:1000], ref[:1000])}
    if teacher_ref is not None:
        m["swd_teacher"] = sliced_wasserstein(x, teacher_ref, cfg.eval.projections)
    return m


def conditional_metrics(x: Tensor, ref: Tensor, teacher_ref: Tensor, k: int, cfg: DiffusionRunConfig) -> dict[str, float]:
    """Class-conditional samples x at k steps (under the reference points' labels): SWD to the data
    ("swd_cond@k") and to the teacher's full-step conditional samples ("swd_cond_teacher@k")."""
    m = sample_metrics(x, ref, teacher_ref, cfg)
    return {f"swd_cond@{k}": m["swd"], f"swd_cond_teacher@{k}": m["swd_teacher"]}


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, 1000 * (time.perf_counter() - t0)


def build_method(mcfg: DiffusionMethodConfig, student: nn.Module, teacher: Teacher, ctx: DiffusionContext) -> DiffusionMethod:
    return methods.get(mcfg.name, "diffusion").builder(student, teacher, ctx, **mcfg.params)


@register_runner("diffusion")
def run_diffusion(cfg: DiffusionRunConfig, *, run_dir: Path | None, log: Callable[[str], None] = print) -> dict[str, Any]:
    source = datasets.get(cfg.data.name, "diffusion").builder(**cfg.data.params)
    process = Process(cfg.teacher.process, cfg.teacher.beta_min, cfg.teacher.beta_max)
    t_net, t_info = load_or_train_teacher(cfg, source, process, log)
    device = Engine(cfg.engine, None, seed=cfg.seed).device
    teacher = Teacher(t_net.to(device))
    T, steps_list = cfg.teacher.steps, cfg.eval.steps

    g = torch.Generator().manual_seed(cfg.eval.seed)
    # a class-conditional teacher on labelled data: also measured class-conditionally, every model sampled
    # under the reference points' own labels (the same draws as unlabelled data), as it was trained
    conditional = getattr(t_net, "num_classes", None) is not None and hasattr(source, "sample_labeled")
    ref, ref_y = source.sample_labeled(cfg.eval.samples, g) if conditional else (source.sample(cfg.eval.samples, g), None)
    ref = ref.to(device)
    ref_y = None if ref_y is None else ref_y.to(device)
    z = torch.randn(ref.shape, generator=g).to(device)
    (t_full, traj, times), t_ms = _timed(lambda: ddim_sample(teacher, process, z, T, cfg.teacher.param, return_traj=True))
    t_metrics: dict[str, Any] = {**sample_metrics(t_full, ref, None, cfg), "steps": T, "sample_ms": t_ms,
                                 "straightness": straightness(traj, times), "params": t_info["params"],
                                 "train_s": t_info["train_s"], "model": cfg.teacher.model.name}
    samples: dict[str, Tensor] = {"data": ref.cpu(), f"teacher@{T}": t_full.cpu()}
    for k in steps_list:
        xk, ms = _timed(lambda k=k: ddim_sample(teacher, process, z, k, cfg.teacher.param))
        for name, v in sample_metrics(xk, ref, t_full, cfg).items():
            t_metrics[f"{name}@{k}"] = v
        t_metrics[f"sample_ms@{k}"] = ms
        samples[f"teacher@{k}"] = xk.cpu()
    t_full_y = None
    if conditional:
        with conditioning(ref_y):
            t_full_y = ddim_sample(teacher, process, z, T, cfg.teacher.param)
            t_metrics["swd_cond"] = sample_metrics(t_full_y, ref, None, cfg)["swd"]
            for k in steps_list:
                xk = ddim_sample(teacher, process, z, k, cfg.teacher.param)
                t_metrics.update(conditional_metrics(xk, ref, t_full_y, k, cfg))
    log(f"teacher: swd {t_metrics['swd']:.4f} at {T} steps; "
        + ", ".join(f"{t_metrics[f'swd@{k}']:.4f} at {k}" for k in steps_list))
    summary: dict[str, Any] = {"family": "diffusion", "primary_metric": "swd", "higher_is_better": False,
                               "teacher": t_metrics, "students": {}, "student_steps": cfg.student.steps,
                               "data": cfg.data.params.get("name", cfg.data.name)}

    for mcfg in cfg.methods:
        label = mcfg.display
        seed_everything(cfg.seed)
        student = build_net(cfg.student.model or cfg.teacher.model, source.dim)
        train = mcfg.train or cfg.train
        ctx = DiffusionContext(process, cfg.teacher.param, cfg.student_param, T, cfg.student.steps,
                               total_steps=(train.max_steps or train.epochs * 100) * cfg.engine.grad_accum, seed=cfg.seed)
        if cfg.student.lora is not None:     # adapters first: methods copy the student (EMA targets, snapshots)
            add_lora(student, cfg.student.lora)
        method = build_method(mcfg, student, teacher, ctx)
        if cfg.student.lora is not None and not method.initialised_from_teacher:
            raise ConfigError(f"student.lora: the student's base weights do not fit the teacher's "
                              f"({cfg.teacher.model.name}); a LoRA student needs the teacher's architecture")
        log(f"student [{label}]: {mcfg.name}, {cfg.student.steps} step(s), "
            f"{'from the teacher' if method.initialised_from_teacher else 'from scratch'}")
        t0 = time.perf_counter()
        out_dir = Path(run_dir) / "students" / label if run_dir is not None else None
        fit(method, method.trainable_parameters(), source, train, cfg, seed=cfg.seed, out_dir=out_dir, name=label,
            weights=mcfg.weights)
        method.finalize()
        train_s = time.perf_counter() - t0
        method.to(device)
        m: dict[str, Any] = {"method": mcfg.name, "train_s": round(train_s, 2), "params": count_parameters(student)}
        if cfg.student.lora is not None:
            m["trainable_params"] = sum(p.numel() for p in student.parameters() if p.requires_grad)
        for k in steps_list:
            gk = torch.Generator().manual_seed(cfg.eval.seed + 1)
            xk, ms = _timed(lambda k=k: method.sample(z, k, generator=gk))
            for name, v in sample_metrics(xk, ref, t_full, cfg).items():
                m[f"{name}@{k}"] = v
            m[f"sample_ms@{k}"] = ms
            if method.sampler == "ode" and k > 1:
                _, tr, tt = method.sample(z, k, return_traj=True)
                m[f"straightness@{k}"] = straightness(tr, tt)
            samples[f"{label}@{k}"] = xk.cpu()
            if conditional:
                gk = torch.Generator().manual_seed(cfg.eval.seed + 1)
                m.update(conditional_metrics(method.sample(z, k, generator=gk, y=ref_y), ref, t_full_y, k, cfg))
        m.update(method.evaluate(source, z, steps_list, cfg.eval))
        m["swd"], m["mmd"] = m[f"swd@{cfg.student.steps}"], m[f"mmd@{cfg.student.steps}"]
        summary["students"][label] = m
        log(f"student [{label}]: swd " + ", ".join(f"{m[f'swd@{k}']:.4f} at {k}" for k in steps_list)
            + f" ({train_s:.1f}s training)")
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            if cfg.student.lora is not None:   # the adapters alone, and student.pt with them merged in
                save_lora(student, out_dir / "lora")
                atomic_torch_save(merge_lora(copy.deepcopy(student).cpu()).state_dict(), out_dir / "student.pt")
            else:
                atomic_torch_save(student.state_dict(), out_dir / "student.pt")
            if extra := method.extra_state():
                atomic_torch_save(extra, out_dir / "method.pt")

    if run_dir is not None:
        atomic_write_text(Path(run_dir) / "summary.json", json.dumps(summary, indent=2))
        from distill.families.diffusion.report import write_report

        write_report(Path(run_dir), cfg, summary, samples)
    return summary
