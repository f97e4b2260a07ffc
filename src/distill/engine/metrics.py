"""What a phase reports: metrics.jsonl lines, experiment trackers (engine/tracking.py), the progress bar, and the
evaluation schedule and history."""
from __future__ import annotations

import json
import time
from typing import Any

from distill.errors import DistillError


class MetricsMixin:
    """The reporting half of `Engine`."""

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
        names = list(dict.fromkeys([*(["tensorboard"] if self.cfg.tensorboard else []), *self.cfg.trackers]))
        if names:
            if self._tb is None:
                from distill.engine.tracking import Trackers

                info = getattr(self.cfg, "_run_info", None) or {}
                group = info.get("group") or (self.out_dir.parent.name if self.out_dir is not None else "run")
                self._tb = Trackers(names, project=self.cfg.tracker_project or info.get("project") or group,
                                    phase=self.name, group=group, out_dir=self.out_dir,
                                    config=info.get("config") or {"engine": self.cfg.model_dump(mode="json")},
                                    init_kwargs=self.cfg.tracker_init)
            self._tb.log(values, self.step_count)

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
