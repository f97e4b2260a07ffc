"""The one evaluation protocol every synthetic set goes through (DC/DSA/DM papers).

Train `n_models` fresh networks (default ConvNet width 128, depth 3, instance norm, avg pooling)
on the synthetic set only: SGD momentum 0.9, weight decay 5e-4, `epochs` epochs of batches of
`batch_size`, the learning rate divided by 10 halfway; optional DSA augmentation of every batch;
soft labels (logits) are learnt with KL at `temperature`. A set that carries a teacher (SRe2L) is
relabelled batch by batch: the target of each augmented batch is the teacher's output on it.
Report test accuracy mean and std.

Everything is a function of (set, protocol, seed): model k starts from `torch.manual_seed(seed *
1000 + k)`, batch order and augmentation draws from a generator seeded the same way.
"""
from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from pydantic import Field
from torch import Tensor

from distill.config import Component, Strict
from distill.families.dataset.augment import DEFAULT_STRATEGY, dsa
from distill.families.dataset.base import SyntheticSet, soft_or_hard_loss


class EvalProtocol(Strict):
    model: Component = Field(default_factory=lambda: Component(name="convnet"))
    n_models: int = Field(5, ge=1, description="fresh networks trained per synthetic set")
    epochs: int = Field(1000, ge=1, description="epochs per fresh network; 1000 as the DSA/DM authors' evaluation "
                        "with augmentation (300 under-trains: docs/benchmarks/dataset.md)")
    lr: float = Field(0.01, gt=0, description="used unless the set carries a learned lr and use_learned_lr")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    batch_size: int = Field(256, ge=1)
    augment: Literal["dsa", "none"] = "dsa"
    strategy: str = DEFAULT_STRATEGY
    temperature: float = Field(1.0, gt=0, description="soft-label KL temperature")
    use_learned_lr: bool = True
    full_data_epochs: int = Field(20, ge=0, description="epochs of the full-data reference (0 = skip)")
    full_data_models: int = Field(1, ge=1)
    curve_every: int = Field(0, ge=0, description="iterations between 1-model checks (accuracy vs iterations)")

    def card(self) -> dict[str, Any]:
        return {"protocol": "DC/DSA/DM: train fresh nets on the set only, test on the real test set",
                "eval_model": {"name": self.model.name, **self.model.params}, "n_models": self.n_models,
                "epochs": self.epochs, "optimizer": f"SGD momentum {self.momentum}, weight decay {self.weight_decay}",
                "lr": self.lr, "lr_schedule": "divided by 10 at epochs/2", "batch_size": self.batch_size,
                "augmentation": self.strategy if self.augment == "dsa" else "none",
                "soft_label_loss": f"KL at T={self.temperature} (a set with a teacher: relabelled per augmented batch)",
                "full_data_epochs": self.full_data_epochs}


@torch.no_grad()
def test_accuracy(net: torch.nn.Module, x: Tensor, y: Tensor, batch: int = 1024) -> float:
    net.eval()
    correct = 0
    for i in range(0, len(x), batch):
        correct += int((net(x[i:i + batch]).argmax(-1) == y[i:i + batch]).sum())
    net.train()
    return 100.0 * correct / max(1, len(x))


def train_one(make_net, images: Tensor, labels: Tensor, test_x: Tensor, test_y: Tensor, p: EvalProtocol,
              seed: int, lr: float | None = None, epochs: int | None = None,
              augment: bool | None = None, teacher: torch.nn.Module | None = None,
              on_epoch: Callable[[int], None] | None = None) -> float:
    """Train one fresh network on (images, labels) under the protocol; return test accuracy (%).
    With `teacher`, the targets of every (augmented) batch are the teacher's logits on that batch."""
    epochs = epochs or p.epochs
    augment = (p.augment == "dsa") if augment is None else augment
    torch.manual_seed(seed)
    net = make_net(seed).to(images.device)
    lr = lr or p.lr
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=p.momentum, weight_decay=p.weight_decay)
    g = torch.Generator().manual_seed(seed)
    n = len(images)
    net.train()
    if teacher is not None:
        teacher = teacher.to(images.device).eval()
    for epoch in range(epochs):
        if epoch == epochs // 2 and epochs > 1:
            for group in opt.param_groups:
                group["lr"] = lr * 0.1
        order = torch.randperm(n, generator=g).to(images.device)
        for i in range(0, n, p.batch_size):
            idx = order[i:i + p.batch_size]
            xb = images[idx]
            if augment:
                xb = dsa(xb, int(torch.randint(0, 2**31 - 1, (), generator=g)), p.strategy, siamese=False)  # per sample
            if teacher is not None:
                with torch.no_grad():
                    target = teacher(xb)
            else:
                target = labels[idx]
            loss = soft_or_hard_loss(net(xb), target, p.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if on_epoch is not None:
            on_epoch(epoch + 1)
    return test_accuracy(net, test_x, test_y)


def evaluate_set(make_net, s: SyntheticSet, test_x: Tensor, test_y: Tensor, p: EvalProtocol, seed: int,
                 n_models: int | None = None, augment: bool | None = None, device: Any = "cpu",
                 epochs: int | None = None, progress: str | None = None) -> dict[str, Any]:
    """Accuracy (%) of `n_models` fresh networks trained on the set: {"accs", "mean", "std"}.
    `progress`: a description to show a progress bar over networks x epochs under."""
    from distill.utils import ProgressBar

    images = s.images.detach().to(device)
    labels = s.labels.detach().to(device)
    lr = s.lr if (s.lr is not None and p.use_learned_lr) else None
    n, ep = n_models or p.n_models, epochs or p.epochs
    accs = []
    with ProgressBar(progress is not None, progress or "", n * ep) as bar:
        for k in range(n):
            accs.append(train_one(make_net, images, labels, test_x, test_y, p, seed * 1000 + k, lr=lr, epochs=epochs,
                                  augment=augment, teacher=s.teacher,
                                  on_epoch=lambda e, k=k: bar.update(k * ep + e)))
    return {"accs": accs, "mean": statistics.mean(accs), "std": statistics.stdev(accs) if len(accs) > 1 else 0.0}


# ---------------------------------------------------------------- files


TEACHER_PREFIX = "teacher."


def save_synthetic(s: SyntheticSet, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
    """Write images, labels, (if any) lr and (if any) the relabelling teacher's weights as one
    safetensors file, atomically; `meta` goes in the header as JSON (with the teacher's architecture)."""
    from safetensors.torch import save

    from distill.utils import atomic_write_bytes

    path = Path(path)
    tensors = {"images": s.images.detach().cpu().contiguous(), "labels": s.labels.detach().cpu().contiguous()}
    if s.lr is not None:
        tensors["lr"] = torch.tensor([float(s.lr)])
    meta = dict(meta or {})
    if s.teacher is not None:
        if not s.teacher_spec:
            raise ValueError("a set with a teacher needs teacher_spec ({'name', 'params'}) to be saved")
        tensors.update({TEACHER_PREFIX + k: v.detach().cpu().contiguous() for k, v in s.teacher.state_dict().items()})
        meta["teacher"] = s.teacher_spec
    atomic_write_bytes(path, save(tensors, metadata={"distill": json.dumps(meta)}))
    return path


def load_synthetic(path: str | os.PathLike) -> tuple[SyntheticSet, dict[str, Any]]:
    """Read a set written by `save_synthetic` (plain `safetensors.torch.load_file` works too: keys
    images, labels, lr, teacher.*). Nothing in the file is executed; a teacher is rebuilt from the
    registered architecture named in the header and its weights loaded strictly."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from distill.errors import DistillError

    path = Path(path)
    if not path.is_file():
        raise DistillError(f"synthetic set {path} not found (a run writes them to RUN_DIR/synthetic/*.safetensors).")
    try:
        t = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {}).get("distill", "{}"))
    except Exception as e:  # noqa: BLE001
        raise DistillError(f"{path} is not a readable safetensors synthetic set ({e}).") from None
    missing = [k for k in ("images", "labels") if k not in t]
    if missing:
        raise DistillError(f"{path} has no {' or '.join(missing)} tensor; a synthetic set needs 'images' (N, C, H, W) "
                           "and 'labels' (N,) or (N, K).")
    lr = float(t["lr"][0]) if "lr" in t else None
    s = SyntheticSet(t["images"], t["labels"], lr)
    spec = meta.get("teacher")
    if spec:
        from distill.models.io import build_model

        if not s.soft:
            raise DistillError(f"{path}: a set with a teacher must carry soft labels (N, K).")
        net = build_model(spec["name"], spec.get("params", {}), tuple(s.images.shape[1:]), int(s.labels.shape[-1]),
                          family="dataset")
        state = {k[len(TEACHER_PREFIX):]: v for k, v in t.items() if k.startswith(TEACHER_PREFIX)}
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise DistillError(f"{path}: the teacher weights do not fit {spec} ({e}).") from None
        s.teacher, s.teacher_spec = net.eval(), spec
    return s, meta
