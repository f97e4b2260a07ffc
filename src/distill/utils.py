"""Small shared helpers: atomic writes, seeding, hashing."""
from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def hash_state_dict(state: dict) -> str:
    """sha256 over names, shapes, dtypes and values of a state dict (order-independent)."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.view(-1).view(__import__("torch").uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def hash_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class ProgressBar:
    """A rich progress bar for loops that do not run in the engine (`with ProgressBar(on, name, total)
    as bar: bar.update(done, terms)`, or `start()` ... `close()`); disabled, it does nothing."""

    def __init__(self, enabled: bool, description: str, total: int, transient: bool = True):
        self.enabled, self.description, self.total = enabled and total > 0, description, total
        self.transient = transient
        self._p = None

    def start(self) -> ProgressBar:
        if self.enabled and self._p is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._p = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                               TextColumn("{task.fields[terms]}"), TimeRemainingColumn(), transient=self.transient)
            self._p.start()
            self._task = self._p.add_task(self.description, total=self.total, terms="")
        return self

    def update(self, done: int, terms: dict[str, float] | None = None) -> None:
        if self._p is not None:
            text = " ".join(f"{k}={v:.3g}" for k, v in (terms or {}).items() if isinstance(v, (int, float)))
            self._p.update(self._task, completed=done, terms=text)

    def close(self) -> None:
        if self._p is not None:
            self._p.stop()
            self._p = None

    def __enter__(self) -> ProgressBar:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def assets_dir() -> Path:
    """$DISTILL_ASSETS, else ../shared/assets beside the repository root."""
    env = os.environ.get("DISTILL_ASSETS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "assets"


def expand(path: str | None) -> str | None:
    """`$DISTILL_ASSETS/...` or `${DISTILL_ASSETS}/...` -> the assets folder; other paths unchanged."""
    if path is None:
        return None
    for key in ("${DISTILL_ASSETS}", "$DISTILL_ASSETS"):
        if path.startswith(key):
            return str(assets_dir()) + path[len(key):]
    return path
