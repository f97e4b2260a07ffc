"""The loop machinery every family uses: device, precision, accumulation, clipping, schedules,
checkpoints with exact resume, metrics, progress. `accelerate` does devices, mixed precision
and distributed wrapping; this module keeps the loop itself in the family's runner:

    engine = Engine(cfg.engine, out_dir, seed=cfg.seed, total_steps=n)
    model, opt, sched = engine.prepare(model, opt, sched)
    engine.resume(model, opt, sched)                    # no-op on a fresh run
    for batch in engine.batches(loader, epochs):        # skips what a resumed run already saw
        with engine.autocast():
            terms = objective(batch)                    # dict of named loss terms
        engine.step(terms, weights)                     # backward, accumulate, clip, step, log
        engine.checkpoint_if_due(model, opt, sched)
    engine.finish()

A run killed at any point and resumed from its last checkpoint ends with the same weights as an
uninterrupted run (same seed, CPU): data order is a function of (seed, epoch), and the checkpoint
holds model, optimiser, scheduler, scaler, RNG states and the loop position.

With several processes, `engine.strategy` picks how the trained module is spread: `ddp` (default)
keeps a full copy on each process and averages gradients; `fsdp` shards it (torch FSDP2, one unit
per repeated block) and also shards the frozen teachers it holds, for the length of the phase.
`finish()` gives the modules back whole, and checkpoints hold full (gathered) weights either way.
"""
from __future__ import annotations

import json
import math
import os
import random
import signal
import time
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.config import EngineConfig, OptimizerConfig, ScheduleConfig, TrainConfig
from distill.errors import ConfigError, DistillError
from distill.utils import atomic_torch_save, seed_everything

# Fault injection for reliability tests: SIGKILL this process right after optimiser step N
# (DISTILL_FAULT_STEP=N, optionally only in phase DISTILL_FAULT_PHASE). Unset in normal use.
_FAULT_STEP = int(os.environ.get("DISTILL_FAULT_STEP", "0") or 0)

_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


def resolve_device(name: str) -> str:
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("engine.device: 'cuda' was asked for but torch sees no CUDA device "
                          f"(torch {torch.__version__}). Use engine.device=cpu or install a CUDA build of torch.")
    if name == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError("engine.device: 'mps' is not available on this machine; use engine.device=cpu.")
    return name


def make_accelerator(device: str, precision: str):
    """An accelerate.Accelerator for these settings (its global state is reset if they changed)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    device = resolve_device(device)
    if precision == "fp16" and device != "cuda":
        raise ConfigError("engine.precision: fp16 needs a CUDA device (loss scaling); use bf16 or fp32 on CPU.")
    mp = _PRECISION[precision]
    state = AcceleratorState._shared_state
    if state and (state.get("_mixed_precision") != mp or str(state.get("device", "")) != device
                  and not str(state.get("device", "")).startswith(device)):
        AcceleratorState._reset_state(reset_partial_state=False)
    try:
        return Accelerator(cpu=(device == "cpu"), mixed_precision=mp)
    except ValueError:
        AcceleratorState._reset_state(reset_partial_state=False)
        return Accelerator(cpu=(device == "cpu"), mixed_precision=mp)


def build_optimizer(cfg: OptimizerConfig, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if not params:
        raise DistillError("nothing to optimise: no parameter requires grad")
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.nesterov and cfg.momentum > 0)
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def schedule_factor(cfg: ScheduleConfig, step: int, total: int) -> float:
    """Multiplier of the base learning rate at optimiser step `step` of `total`."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.name == "constant" or total <= 0:
        return 1.0
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    if cfg.name == "cosine":
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if cfg.name == "linear":
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * (1 - progress)
    return cfg.gamma if progress >= cfg.step_fraction else 1.0  # "step"


def build_scheduler(cfg: ScheduleConfig, optimizer: torch.optim.Optimizer, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: schedule_factor(cfg, s, total_steps))


def unwrap(module: nn.Module) -> nn.Module:
    """The model under DDP (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while True:
        if hasattr(module, "_orig_mod"):
            module = module._orig_mod
        elif isinstance(module, nn.parallel.DistributedDataParallel) or (
            type(module).__name__ in ("DistributedDataParallel", "FullyShardedDataParallel") and hasattr(module, "module")
        ):
            module = module.module
        else:
            return module


def _rng_state() -> dict[str, Any]:
    import numpy as np

    st: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
                          "python_version": random.getstate()[0], "python_gauss": random.getstate()[2]}
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    st["numpy"] = {"keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached": float(cached)}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict[str, Any]) -> None:
    import numpy as np

    torch.set_rng_state(st["torch"])
    random.setstate((st["python_version"], tuple(st["python"]), st["python_gauss"]))
    n = st["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


class Engine:
    """One training phase (e.g. the teacher, or one student) with its own folder and checkpoints."""

    def __init__(self, cfg: EngineConfig, out_dir: str | os.PathLike | None, *, seed: int = 0,
                 total_steps: int = 0, name: str = "train", metrics_path: str | os.PathLike | None = None):
        self.cfg, self.seed, self.name = cfg, seed, name
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.total_steps = total_steps
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        seed_everything(seed)
        self.accelerator = make_accelerator(cfg.device, cfg.precision)
        self.device = self.accelerator.device
        self.fsdp = cfg.strategy == "fsdp"
        if self.fsdp:
            self._check_fsdp()
        self._teachers: list = []    # teachers sharded for this phase (fsdp)
        self.step_count = 0          # optimiser steps done
        self.epoch = 0
        self.batch_in_epoch = 0      # micro-batches consumed in the current epoch
        self._micro = 0              # micro-batches since the last optimiser step
        self._skip = 0               # micro-batches to skip after a resume
        self.history: list[dict[str, Any]] = []  # evaluation records (kept in checkpoints)
        self.last_terms: dict[str, float] = {}
        self.bad_steps = 0           # optimiser steps skipped for a non-finite loss
        self.consecutive_bad = 0
        self._model = self._opt = self._sched = None
        self._progress = None
        self._tb = None
        self._t0 = time.perf_counter()
        self._metrics_path = (Path(metrics_path) if metrics_path is not None
                              else self.out_dir / "metrics.jsonl" if self.out_dir else None)

    # ------------------------------------------------------------------ setup
    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def _check_fsdp(self) -> None:
        from accelerate.utils import DistributedType

        acc = self.accelerator
        if acc.num_processes < 2:
            raise ConfigError("engine.strategy=fsdp shards the student and the teacher across processes, and this "
                              "run has one. Start it with `distill run RECIPE --nproc N` (N >= 2), or use "
                              "engine.strategy=ddp (the default) in a single process.")
        if acc.distributed_type not in (DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
            raise ConfigError(f"engine.strategy=fsdp: the processes were started as {acc.distributed_type.value} "
                              "(an accelerate config with its own FSDP/DeepSpeed/XLA setting?). Start them with "
                              "`distill run --nproc N` or plain torchrun, or leave engine.strategy at ddp.")
        if self.cfg.precision == "fp16":
            raise ConfigError("engine.strategy=fsdp does not support fp16 loss scaling here; use bf16 or fp32.")
        try:
            from torch.distributed.fsdp import fully_shard  # noqa: F401
        except ImportError:
            raise ConfigError(f"engine.strategy=fsdp needs torch.distributed.fsdp.fully_shard (torch >= 2.6); "
                              f"this is torch {torch.__version__}.") from None

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, scheduler=None):
        """Move to the device and wrap for distributed runs. Teachers are never wrapped (under
        engine.strategy=fsdp the ones the model holds are sharded, see `_shard`).

        The optimiser goes through accelerate only where accelerate must act on it (fp16 loss
        scaling, DeepSpeed, XLA); otherwise it stays a plain torch optimiser, which keeps the
        per-step overhead at that of a hand-written loop. The scheduler always stays plain: it is
        stepped once per optimiser step, whatever the number of processes.
        """
        from accelerate.utils import DistributedType

        acc = self.accelerator
        special = acc.distributed_type in (DistributedType.DEEPSPEED, DistributedType.XLA,
                                           DistributedType.MEGATRON_LM)
        self._plain_backward = acc.scaler is None and not special
        if self.fsdp:
            model, optimizer = self._shard(model, optimizer)
        elif special:
            prepared = acc.prepare(*[o for o in (model, optimizer) if o is not None])
            prepared = list(prepared) if isinstance(prepared, (list, tuple)) else [prepared]
            model = prepared[0]
            optimizer = prepared[1] if optimizer is not None else None
        else:
            if acc.num_processes > 1 and self.device.type == "cuda":
                # batch statistics over the global batch; on CPU (gloo) BatchNorm stays per process
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            model = acc.prepare_model(model)
            if optimizer is not None and acc.scaler is not None:
                optimizer = acc.prepare_optimizer(optimizer)
        self._model, self._opt, self._sched = model, optimizer, scheduler
        return model, optimizer, scheduler

    def _shard(self, model: nn.Module, optimizer: torch.optim.Optimizer | None):
        """engine.strategy=fsdp: shard `model` in place (each repeated block is a unit of its own, the
        model is the root unit holding the rest, so the method's forward may read any of its
        parameters; its `student` may also be called alone), point the optimiser at the sharded
        parameters, and shard every frozen Teacher the model holds."""
        from distill.dist import fsdp_callable_alone, fsdp_shard, local_numel
        from distill.teacher import Teacher

        names = {id(p): n for n, p in model.named_parameters()}
        if optimizer is not None:
            if optimizer.state:
                raise DistillError("engine.strategy=fsdp: the optimiser must be fresh (no state) when the model is prepared")
            for group in optimizer.param_groups:
                if any(id(p) not in names for p in group["params"]):
                    raise DistillError("engine.strategy=fsdp: the optimiser holds parameters that are not the "
                                       "prepared module's; FSDP can only shard the module's own parameters.")
        fsdp_shard(model)
        student = getattr(model, "student", None)
        if isinstance(student, nn.Module) and student is not model:
            self._alone_hooks = fsdp_callable_alone(model, student)
        if optimizer is not None:
            params = dict(model.named_parameters())
            for group in optimizer.param_groups:
                group["params"] = [params[names[id(p)]] for p in group["params"]]
        # a teacher whose modules are already sharded (part of the model or of another teacher, as
        # in an ensemble that includes the run's teacher) stays whole
        claimed = {id(m) for m in model.modules()}
        for m in model.modules():
            for v in list(vars(m).values()):
                if isinstance(v, Teacher) and not v.sharded:
                    mods = {id(sub) for sub in v.module.modules()}
                    if mods & claimed:
                        continue
                    claimed |= mods
                    self._teachers.append(v.shard())
        # one line in the metrics: how many parameter elements each process holds
        counts = torch.tensor([[local_numel(model)] + [local_numel(t.module) for t in self._teachers]],
                              dtype=torch.float64)
        every = self.accelerator.gather(counts.to(self.device)).cpu().long().tolist()
        self.log({"fsdp/processes": self.accelerator.num_processes,
                  "fsdp/params": sum(p.numel() for p in model.parameters()),
                  "fsdp/params_local": [row[0] for row in every],
                  "fsdp/teacher_params": [t.num_parameters() for t in self._teachers],
                  "fsdp/teacher_params_local": [row[1:] for row in every]})
        return model, optimizer

    def _unshard(self) -> None:
        """engine.strategy=fsdp: give the model and the teachers back whole (every process)."""
        from distill.dist import fsdp_release, is_fsdp

        for h in getattr(self, "_alone_hooks", []):
            h.remove()
        self._alone_hooks = []
        if self._model is not None and is_fsdp(self._model):
            fsdp_release(self._model)
        for t in self._teachers:
            t.unshard()
        self._teachers = []

    def start(self, module: nn.Module, train_cfg: TrainConfig, *, batches_per_epoch: int | None = None,
              total_steps: int | None = None, params: Iterable[torch.nn.Parameter] | None = None):
        """Device, optimiser, schedule, wrapping and resume for one training phase.

        The number of optimiser steps is `total_steps`, or batches_per_epoch / grad_accum x epochs
        capped by `train.max_steps`. Returns (model, optimizer, scheduler) to use in the loop.
        """
        if total_steps is None:
            if batches_per_epoch is None:
                raise ValueError("start() needs batches_per_epoch or total_steps")
            total_steps = -(-batches_per_epoch // self.cfg.grad_accum) * train_cfg.epochs
            if train_cfg.max_steps:
                total_steps = min(total_steps, train_cfg.max_steps)
        self.total_steps = total_steps
        module.to(self.device)
        optimizer = build_optimizer(train_cfg.optimizer, module.parameters() if params is None else params)
        scheduler = build_scheduler(train_cfg.schedule, optimizer, total_steps)
        model, optimizer, scheduler = self.prepare(module, optimizer, scheduler)
        self.resume(model, optimizer, scheduler)
        return model, optimizer, scheduler

    def autocast(self):
        return self.accelerator.autocast() if self.cfg.precision != "fp32" else nullcontext()

    def to_device(self, batch: Any) -> Any:
        if isinstance(batch, torch.Tensor):
            return batch.to(self.device, non_blocking=True)
        if isinstance(batch, dict):
            return {k: self.to_device(v) for k, v in batch.items()}
        if isinstance(batch, (list, tuple)):
            return type(batch)(self.to_device(v) for v in batch)
        return batch

    # ------------------------------------------------------------------ loop
    def batches(self, loader, epochs: int, max_steps: int | None = None) -> Iterator[Any]:
        """Yield device batches for `epochs` epochs (or until `max_steps` optimiser steps)."""
        per_epoch = math.ceil(len(loader) / self.cfg.grad_accum)
        total = per_epoch * epochs if max_steps is None else min(max_steps, per_epoch * epochs)
        self.total_steps = self.total_steps or total
        self._start_progress(total)
        try:
            for epoch in range(self.epoch, epochs):
                self.epoch = epoch
                if hasattr(loader, "set_epoch"):
                    loader.set_epoch(epoch)
                elif hasattr(getattr(loader, "sampler", None), "set_epoch"):  # a DataLoader with a DistributedSampler
                    loader.sampler.set_epoch(epoch)
                start = 0
                if self.batch_in_epoch and hasattr(loader, "resume_at"):  # skips without reading the batches
                    loader.resume_at(self.batch_in_epoch)
                    start = self.batch_in_epoch
                for i, batch in enumerate(loader, start=start):
                    if i < self.batch_in_epoch:   # seen before the resume
                        continue
                    if max_steps is not None and self.step_count >= max_steps:
                        return
                    self.batch_in_epoch = i + 1
                    self._last_batch_of_epoch = (i + 1 == len(loader))
                    if self._micro == 0:  # a new accumulation window; the epoch's last may be short
                        self._window = min(self.cfg.grad_accum, len(loader) - i)
                    yield self.to_device(batch)
                self.batch_in_epoch = 0
                if max_steps is not None and self.step_count >= max_steps:
                    return
        finally:
            self._stop_progress()

    def step(self, terms: dict[str, torch.Tensor], weights: dict[str, float] | None = None) -> torch.Tensor:
        """Weighted sum of loss terms, backward, and an optimiser step every `grad_accum` batches."""
        weights = weights or {}
        total = sum(weights.get(k, 1.0) * v for k, v in terms.items())
        if not isinstance(total, torch.Tensor):
            raise DistillError(f"objective returned no loss terms ({list(terms)})")
        self._micro += 1
        window = getattr(self, "_window", self.cfg.grad_accum)
        boundary = self._micro >= window
        bad = self.cfg.nan_policy == "skip" and not bool(torch.isfinite(total.detach()).all())
        self._bad_in_window = getattr(self, "_bad_in_window", False) or bad
        if self.fsdp:  # gradients are reduce-scattered at the last micro-batch of the window only
            if self._model is not None:
                self._model.set_requires_gradient_sync(boundary)
            ctx = nullcontext()
        else:
            ctx = nullcontext() if boundary or self._model is None else self.accelerator.no_sync(self._model)
        with ctx:
            if bad and self.fsdp:
                # every process must join FSDP's gradient reduction; the window is skipped on all of
                # them (decided jointly below), so these gradients are discarded
                (total / window).backward()
            elif bad:  # no backward through NaNs: zero gradients keep every process in step under DDP
                params = [p for p in (self._model or nn.Module()).parameters() if p.requires_grad]
                if params:
                    sum((p * 0).sum() for p in params).backward()
            elif getattr(self, "_plain_backward", False):
                (total / window).backward()
            else:
                self.accelerator.backward(total / window)
        # loss values stay on the device; they are read (one sync) only when logged
        self._terms_t = {**{k: v.detach() for k, v in terms.items()}, "loss": total.detach()}
        if boundary:
            skip = self._window_is_bad()
            if skip:
                self.bad_steps += 1
                self.consecutive_bad += 1
                self.log({"skipped_step": 1, "reason": "non-finite loss",
                          **{"loss/" + k: float(v) for k, v in self._terms_t.items()}})
                if self.consecutive_bad >= self.cfg.max_bad_steps:
                    raise DistillError(
                        f"{self.consecutive_bad} consecutive steps had a non-finite loss (last at step "
                        f"{self.step_count}); stopping. Lower the learning rate, set engine.clip_grad_norm, "
                        "or use fp32. No weights were updated by those steps; the last checkpoint is intact.")
                if self._opt is not None:
                    self._opt.zero_grad(set_to_none=True)
            else:
                self.consecutive_bad = 0
                if self.cfg.clip_grad_norm and self._model is not None:
                    if self.fsdp:  # the norm over the sharded gradients is the global one
                        torch.nn.utils.clip_grad_norm_(self._model.parameters(), self.cfg.clip_grad_norm)
                    else:
                        self.accelerator.clip_grad_norm_(self._model.parameters(), self.cfg.clip_grad_norm)
                if self._opt is not None:
                    self._opt.step()
                    self._opt.zero_grad(set_to_none=True)
            if self._sched is not None:
                self._sched.step()
            self._micro = 0
            self.step_count += 1
            if self.step_count % self.cfg.log_every == 0 or self.step_count == 1:
                self._read_terms()
                self.log({"loss/" + k: v for k, v in self.last_terms.items()}
                         | {"lr": self.lr, "epoch": self.epoch})
            self._update_progress()
            if (_FAULT_STEP and self.step_count == _FAULT_STEP
                    and os.environ.get("DISTILL_FAULT_PHASE", self.name) == self.name):
                os.kill(os.getpid(), signal.SIGKILL)
        return total.detach()

    def _window_is_bad(self) -> bool:
        """Whether any micro-batch of this window, on any process, had a non-finite loss."""
        bad = getattr(self, "_bad_in_window", False)
        self._bad_in_window = False
        if self.cfg.nan_policy != "skip":
            return False
        if self.accelerator.num_processes > 1:
            flag = torch.tensor([1.0 if bad else 0.0], device=self.device)
            bad = bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)
        return bad

    def _read_terms(self) -> None:
        """Copy the latest loss terms to floats; fail on a non-finite loss (checked at each log step)."""
        vals = torch.stack([v.float().reshape(()) for v in self._terms_t.values()]).tolist()
        self.last_terms = dict(zip(self._terms_t, vals))
        if self.cfg.nan_policy == "raise" and not all(math.isfinite(v) for v in vals):
            raise DistillError(f"non-finite loss at step {self.step_count}: "
                               + ", ".join(f"{k}={v:.4g}" for k, v in self.last_terms.items())
                               + ". Lower the learning rate, enable engine.clip_grad_norm, or use fp32. "
                               "The last checkpoint is intact.")

    @property
    def at_step_boundary(self) -> bool:
        return self._micro == 0

    @property
    def lr(self) -> float:
        return float(self._opt.param_groups[0]["lr"]) if self._opt is not None else 0.0

    def eval_due(self) -> bool:
        """True right after the optimiser step at which an evaluation is scheduled."""
        if not self.at_step_boundary:
            return False
        if self.cfg.eval_every:
            return self.step_count % self.cfg.eval_every == 0
        return self.batch_in_epoch == 0 or getattr(self, "_last_batch_of_epoch", False)

    def record_eval(self, metrics: dict[str, float]) -> None:
        rec = {"step": self.step_count, "epoch": self.epoch + (1 if getattr(self, "_last_batch_of_epoch", False) else 0)}
        rec.update(metrics)
        self.history.append(rec)
        self.log({"eval/" + k: v for k, v in metrics.items()})

    # ------------------------------------------------------------------ logging
    def log(self, values: dict[str, Any]) -> None:
        if not self.is_main:
            return
        rec = {"phase": self.name, "step": self.step_count, "time": round(time.perf_counter() - self._t0, 3)}
        rec.update({k: (round(v, 6) if isinstance(v, float) else v) for k, v in values.items()})
        if self._metrics_path is not None:
            self._metrics_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self._metrics_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
        if self.cfg.tensorboard and self.out_dir is not None:
            if self._tb is None:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError as e:
                    raise DistillError("engine.tensorboard=true needs `pip install distill[tensorboard]`") from e
                self._tb = SummaryWriter(str(self.out_dir / "tensorboard"))
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(f"{self.name}/{k}", v, self.step_count)

    def _start_progress(self, total: int) -> None:
        from distill.utils import ProgressBar

        self._progress = ProgressBar(self.cfg.progress and self.is_main, self.name, total, transient=False).start()
        self._progress.update(self.step_count)

    def _update_progress(self) -> None:
        if self._progress is not None:
            self._progress.update(self.step_count, self.last_terms)

    def _stop_progress(self) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_dir(self) -> Path | None:
        return self.out_dir / "checkpoints" if self.out_dir else None

    def checkpoint_due(self) -> bool:
        if not self.at_step_boundary or self.checkpoint_dir is None:
            return False
        if self.cfg.checkpoint_every:
            return self.step_count > 0 and self.step_count % self.cfg.checkpoint_every == 0
        return getattr(self, "_last_batch_of_epoch", False)

    def checkpoint_if_due(self, model: nn.Module, optimizer=None, scheduler=None, extra: dict | None = None) -> None:
        if self.checkpoint_due():
            self.save_checkpoint(model, optimizer, scheduler, extra)

    def save_checkpoint(self, model: nn.Module, optimizer=None, scheduler=None, extra: dict | None = None) -> Path | None:
        """Write checkpoints/step_XXXXXXXX.pt atomically, point `latest` at it, keep the newest few."""
        self.accelerator.wait_for_everyone()
        if self.fsdp and self.checkpoint_dir is not None:  # gather full weights (every process takes part)
            model_sd, opt_sd = self._full_state(model, optimizer)
        if not self.is_main or self.checkpoint_dir is None:
            return None
        state = {
            "model": model_sd if self.fsdp else unwrap(model).state_dict(),
            "optimizer": (opt_sd if self.fsdp else optimizer.state_dict()) if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": self.accelerator.scaler.state_dict() if self.accelerator.scaler is not None else None,
            "rng": _rng_state(),
            "loop": {"step": self.step_count, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch},
            "history": json.dumps(self.history),
            "extra": json.dumps(extra or {}),
        }
        if self.fsdp:  # optimiser state is keyed by parameter name, not position
            state["strategy"] = "fsdp"
        d = self.checkpoint_dir
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"step_{self.step_count:08d}.pt"
        from distill.utils import atomic_write_text

        try:
            atomic_torch_save(state, path)
            atomic_write_text(d / "latest", path.name)
        except OSError as e:  # disk full, quota, read-only: the previous checkpoint stays valid
            prev = self.latest_checkpoint()
            raise DistillError(
                f"could not write checkpoint {path} ({e.strerror or e}). Free space in {d} and resume with "
                f"--resume; the last good checkpoint is {prev.name if prev else '(none)'}.") from None
        for old in sorted(d.glob("step_*.pt"))[: -self.cfg.keep_checkpoints]:
            old.unlink(missing_ok=True)
        return path

    @staticmethod
    def _full_state(model: nn.Module, optimizer) -> tuple[dict, dict | None]:
        """Full (gathered) model and optimiser state dicts of a sharded model, on the main process
        (the others get empty ones). Every process must call this."""
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_sd = get_model_state_dict(model, options=opts)
        opt_sd = get_optimizer_state_dict(model, optimizer, options=opts) if optimizer is not None else None
        return model_sd, opt_sd

    @staticmethod
    def _load_full_state(model: nn.Module, optimizer, model_sd: dict, opt_sd: dict | None) -> None:
        """Load full state dicts (read by every process) into a sharded model and its optimiser."""
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)

        opts = StateDictOptions(full_state_dict=True)
        set_model_state_dict(model, model_sd, options=opts)
        if optimizer is not None and opt_sd is not None:
            set_optimizer_state_dict(model, optimizer, opt_sd, options=opts)

    def latest_checkpoint(self) -> Path | None:
        d = self.checkpoint_dir
        if d is None or not (d / "latest").is_file():
            return None
        path = d / (d / "latest").read_text().strip()
        return path if path.is_file() else None

    def resume(self, model: nn.Module, optimizer=None, scheduler=None) -> dict[str, Any] | None:
        """Restore the latest checkpoint if there is one; return its `extra` dict (None if fresh)."""
        path = self.latest_checkpoint()
        if path is None:
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise DistillError(f"checkpoint {path} cannot be read ({e}); delete it to restart that phase.") from None
        written = state.get("strategy", "ddp")
        if written != self.cfg.strategy:
            raise DistillError(f"checkpoint {path} was written with engine.strategy={written}; resume it with the "
                               f"same strategy (this run has {self.cfg.strategy}), or delete it to restart that phase.")
        if self.fsdp:
            self._load_full_state(model, optimizer, state["model"], state["optimizer"])
        else:
            unwrap(model).load_state_dict(state["model"])
            if optimizer is not None and state["optimizer"] is not None:
                optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state["scheduler"] is not None:
            scheduler.load_state_dict(state["scheduler"])
        if state["scaler"] is not None and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        loop = state["loop"]
        self.step_count, self.epoch, self.batch_in_epoch = loop["step"], loop["epoch"], loop["batch_in_epoch"]
        self.history = json.loads(state["history"])
        self._truncate_metrics(self.step_count)
        return json.loads(state["extra"])

    def _truncate_metrics(self, step: int) -> None:
        """Drop this phase's metric lines written after the checkpoint (they will be written again)."""
        p = self._metrics_path
        if p is None or not p.is_file() or not self.is_main:
            return
        keep = []
        for line in p.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by the kill
            if rec.get("phase") == self.name and rec.get("step", 0) > step:
                continue
            keep.append(line)
        from distill.utils import atomic_write_text

        atomic_write_text(p, "\n".join(keep) + ("\n" if keep else ""))

    def finish(self) -> None:
        self._stop_progress()
        if self._tb is not None:
            self._tb.close()
        if self.fsdp:  # the trained module and the teachers leave the phase whole, on every process
            self._unshard()
        self.accelerator.wait_for_everyone()
