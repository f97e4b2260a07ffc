"""Checkpoints of a phase: the file format (model, optimiser, scheduler, scaler, RNG states, loop
position, evaluation history), atomic writes, the newest few kept, exact resume, and the metrics
lines written after a checkpoint dropped on resume."""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.engine.setup import unwrap
from distill.errors import DistillError
from distill.utils import atomic_torch_save


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



class CheckpointMixin:
    """The checkpoint half of `Engine` (reads the loop position and config the engine holds)."""

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
        if getattr(self, "_ema", None) is not None:  # engine.ema: the average and its step count
            state["ema"] = self._ema.state_dict()
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
        if getattr(self, "_ema", None) is not None:
            if "ema" not in state:
                raise DistillError(f"checkpoint {path} has no weight average (engine.ema was unset when it was "
                                   "written); resume with the same engine.ema, or delete it to restart that phase.")
            self._ema.load_state_dict(state["ema"])
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
