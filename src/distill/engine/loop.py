"""The loop of one training phase: `Engine` (see the package docstring)."""
from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.config import EngineConfig, TrainConfig
from distill.engine.checkpoint import CheckpointMixin
from distill.engine.metrics import MetricsMixin
from distill.engine.setup import build_optimizer, build_scheduler, make_accelerator, unwrap
from distill.engine.sharding import ShardingMixin
from distill.errors import DistillError
from distill.utils import seed_everything

# Fault injection for reliability tests: SIGKILL this process right after optimiser step N
# (DISTILL_FAULT_STEP=N, optionally only in phase DISTILL_FAULT_PHASE). Unset in normal use.
_FAULT_STEP = int(os.environ.get("DISTILL_FAULT_STEP", "0") or 0)


def trained_network(module: nn.Module) -> nn.Module:
    """The network a phase trains: a method's `student`, else the module itself."""
    net = getattr(module, "student", None)
    return net if isinstance(net, nn.Module) else module


class Engine(ShardingMixin, CheckpointMixin, MetricsMixin):
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

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, scheduler=None):
        """Move to the device and wrap for distributed runs. Teachers are never wrapped (under
        engine.strategy=fsdp the ones the model holds are sharded, see `_shard`).

        The optimiser goes through accelerate only where accelerate must act on it (fp16 loss
        scaling, DeepSpeed, XLA); otherwise it stays a plain torch optimiser, which keeps the
        per-step overhead at that of a hand-written loop. The scheduler always stays plain: it is
        stepped once per optimiser step, whatever the number of processes.
        """
        from accelerate.utils import DistributedType

        if self.cfg.compile:
            self.compile(model)
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
        self._ema = None
        if self.cfg.ema:  # (not with fsdp: EngineConfig refuses the pair)
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self._ema_net = trained_network(unwrap(model))
            self._ema = AveragedModel(self._ema_net, multi_avg_fn=get_ema_multi_avg_fn(self.cfg.ema), use_buffers=True)
        return model, optimizer, scheduler

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

    def compile(self, module: nn.Module) -> None:
        """engine.compile: compile the network a phase trains (`module.student`, else `module`) in place
        with `nn.Module.compile`, so the object, its parameters and its state-dict keys stay the
        ones the runner holds and saves."""
        net = trained_network(module)
        if not getattr(net, "_distill_compiled", False):
            net.compile(backend=self.cfg.compile_backend)
            net._distill_compiled = True

    def fit(self, method: nn.Module, loader, train_cfg: TrainConfig, *, weights: dict[str, float] | None = None,
            eval_fn: Callable[[], dict[str, float]] | None = None, on_eval: Callable[[dict], None] | None = None,
            stop: Callable[[], bool] | None = None, params: Iterable[torch.nn.Parameter] | None = None,
            after_start: Callable[[], None] | None = None,
            batch_hook: Callable[[Any], Any] | None = None) -> nn.Module:
        """The training loop every family with a trained module uses: start (optimiser, schedule,
        wrapping, resume), then per batch `method.on_step` (if it has one), the weighted loss terms of
        `method(batch)`, the engine step, a due evaluation (`eval_fn() -> metrics`, recorded in
        `history`, then `on_eval(record)`), a due checkpoint and `stop()` at step boundaries; then
        `finish`. Evaluation time is kept apart in `eval_seconds`. `after_start()` runs once the module
        is prepared (and resumed); `batch_hook(batch)` may add to each batch what the method reads
        (the diffusion family's optimiser-step count). Returns the prepared module (eval mode)."""
        model, optimizer, scheduler = self.start(method, train_cfg, batches_per_epoch=len(loader), params=params)
        if after_start is not None:
            after_start()
        weights = {**getattr(method, "weights", {}), **(weights or {})}
        on_step = getattr(method, "on_step", None)
        self.eval_seconds = 0.0
        model.train()
        for batch in self.batches(loader, train_cfg.epochs, train_cfg.max_steps):
            if on_step is not None:
                on_step(self.step_count, self.epoch)
            if batch_hook is not None:
                batch = batch_hook(batch)
            with self.autocast():
                terms = model(batch)
            self.step(terms, weights)
            if eval_fn is not None and self.eval_due():
                t_eval = time.perf_counter()
                self.record_eval(eval_fn())
                self.eval_seconds += time.perf_counter() - t_eval
                if on_eval is not None:
                    on_eval(self.history[-1])
            self.checkpoint_if_due(model, optimizer, scheduler)
            if stop is not None and self.at_step_boundary and stop():
                break
        self.finish()
        model.eval()
        return model

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
        # a weight of 1 adds the term as it is (one tensor op less per term and step)
        total = sum(v if weights.get(k, 1.0) == 1.0 else weights.get(k, 1.0) * v for k, v in terms.items())
        if not isinstance(total, torch.Tensor):
            raise DistillError(f"objective returned no loss terms ({list(terms)})")
        self._micro += 1
        window = getattr(self, "_window", self.cfg.grad_accum)
        boundary = self._micro >= window
        bad = self.cfg.nan_policy == "skip" and not math.isfinite(total.detach().item())  # one read, one sync
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
                if self._ema is not None:
                    self._ema.update_parameters(self._ema_net)
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

    def finish(self) -> None:
        self._stop_progress()
        if getattr(self, "_ema", None) is not None:  # the phase ends with the averaged weights
            self._ema_net.load_state_dict(self._ema.module.state_dict())
        if self._tb is not None:  # the phase's tracker runs
            self._tb.finish()
            self._tb = None
        if self.fsdp:  # the trained module and the teachers leave the phase whole, on every process
            self._unshard()
        self.accelerator.wait_for_everyone()
