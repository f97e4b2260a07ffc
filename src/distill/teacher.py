"""The frozen teacher, and the on-disk cache of its outputs.

`Teacher` is not an nn.Module: it cannot become a submodule of a student or method, so it is
never in an optimiser, a DDP wrapper or a student's state dict. It is in eval mode, its
parameters do not require grad, and it runs under no_grad. Under engine.strategy=fsdp the engine
shards it across the processes for the length of a training phase (`shard` / `unshard`).

`TeacherCache` stores, per sample id, the teacher's top-k logits (fp16), their indices, and the
log-sum-exp at the distillation temperature (so top-k log-probs and the tail mass are exact),
with metadata (teacher weights hash, data hash, temperature, k, augmentation) and a sha256 of
the tensor file. `FeatureCache` stores, per sample id, the teacher's logits and the outputs of the
layers a feature method taps. A cache that does not match the run, or whose checksum fails, is
refused.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distill.errors import CacheMismatchError
from distill.utils import atomic_write_bytes, atomic_write_text, hash_state_dict, sha256_file

CACHE_FORMAT = 1


class Teacher:
    """A frozen model. Calling it runs the wrapped module in eval mode without gradients."""

    def __init__(self, module: nn.Module, name: str = "teacher"):
        module.eval()
        module.requires_grad_(False)
        self._module = module
        self.name = name
        self._hash: str | None = None

    @property
    def module(self) -> nn.Module:
        return self._module

    def __call__(self, *args, **kwargs):
        if self._module.training:  # someone called .train() on it: put it back
            self._module.eval()
        with torch.no_grad():
            return self._module(*args, **kwargs)

    def to(self, device) -> Teacher:
        self._module.to(device)
        return self

    @property
    def sharded(self) -> bool:
        return getattr(self, "_sharded", False)

    def shard(self) -> Teacher:
        """Shard the frozen module across the processes with FSDP (engine.strategy=fsdp; every
        process calls this). A model with repeated blocks (children of an nn.ModuleList, as in
        transformers) has each block sharded, gathered for the block's forward and freed right after
        it; the rest (embeddings, heads, norms) stays whole on every process, since methods read
        those directly (e.g. the LM head's weights). A model without blocks is sharded as one unit.
        It never gets gradients or optimiser state. The weights fingerprint is taken first."""
        from distill.dist import fsdp_shard, fsdp_units

        if not self.sharded:
            self.fingerprint()
            fsdp_shard(self._module, root=not fsdp_units(self._module), reshard_after_forward=True)
            self._module.requires_grad_(False)
            self._module.eval()
            self._sharded = True
        return self

    def unshard(self) -> Teacher:
        """Undo `shard` (every process calls this): the module holds its full weights again."""
        from distill.dist import fsdp_release

        if self.sharded:
            fsdp_release(self._module)
            self._module.requires_grad_(False)
            self._sharded = False
        return self

    def fingerprint(self) -> str:
        """Hash of the weights (names, shapes, values): identifies the teacher for caches."""
        if self._hash is None:
            self._hash = hash_state_dict(self._module.state_dict())
        return self._hash

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self._module.parameters())


class Ensemble(nn.Module):
    """Several models whose softmax outputs are averaged; returns log of the mean probability."""

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, ...) -> (B, C) log mean prob
        from distill.models.outputs import logits_of

        logp = torch.stack([F.log_softmax(logits_of(m(x)).float(), -1) for m in self.members])  # (M, B, C)
        return torch.logsumexp(logp, 0) - torch.log(torch.tensor(float(len(self.members))))


def write_checked(folder: Path, file_name: str, meta_name: str, tensors: dict[str, torch.Tensor],
                  meta: dict[str, Any]) -> dict[str, Any]:
    """Write tensors (safetensors) and their metadata with the file's sha256, each atomically."""
    from safetensors.torch import save

    atomic_write_bytes(folder / file_name, save(tensors))
    meta = {**meta, "sha256": sha256_file(folder / file_name)}
    atomic_write_text(folder / meta_name, json.dumps(meta, indent=2))
    return meta


def read_checked(folder: Path, file_name: str, meta_name: str, expected: dict[str, Any], what: str
                 ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read what `write_checked` wrote; refuse it (CacheMismatchError) if a metadata field differs
    from `expected`, the metadata is unreadable, or the checksum fails."""
    from safetensors.torch import load_file

    meta_p, file_p = folder / meta_name, folder / file_name
    if not meta_p.is_file() or not file_p.is_file():
        raise CacheMismatchError(f"{what} {folder}: missing {meta_name} or {file_name}.")
    try:
        meta = json.loads(meta_p.read_text())
    except json.JSONDecodeError:
        raise CacheMismatchError(f"{what} {folder}: {meta_name} is corrupt; delete the folder.") from None
    diffs = [f"{key}: cache has {meta.get(key)!r}, this run needs {val!r}"
             for key, val in expected.items() if meta.get(key) != val]
    if diffs:
        raise CacheMismatchError(
            f"{what} {folder} was made for another setting and will not be reused:\n  " + "\n  ".join(diffs)
            + f"\nDelete {folder} (or point the cache elsewhere) to rebuild it.")
    if sha256_file(file_p) != meta.get("sha256"):
        raise CacheMismatchError(f"{what} {folder}: checksum mismatch ({file_name} is corrupt or was modified). "
                                 "Delete the folder to rebuild it.")
    return meta, load_file(str(file_p))


@dataclass
class CachedOutputs:
    """Teacher outputs for a batch as read from a cache: top-k indices and log-probs at T."""

    indices: torch.Tensor   # (B, k) long
    logprobs: torch.Tensor  # (B, k) float32, normalised over all classes at temperature T


class CheckedCache:
    """A folder of tensors written by `write_checked`, opened only when its metadata matches."""

    FILE, META, WHAT = "", "meta.json", "cache"

    def __init__(self, folder: Path, meta: dict[str, Any], tensors: dict[str, torch.Tensor]):
        raise NotImplementedError

    @classmethod
    def load(cls, folder: str | os.PathLike, expected: dict[str, Any]):
        """Open a cache, refusing it if its metadata differs from `expected` or its checksum fails."""
        meta, tensors = read_checked(Path(folder), cls.FILE, cls.META, expected, cls.WHAT)
        return cls(Path(folder), meta, tensors)

    @classmethod
    def open_or_build(cls, folder: str | os.PathLike, expected: Callable[[], dict[str, Any]], build: Callable[[], Any]):
        """Reuse the cache in `folder` (refused if it does not match `expected()`), or `build()` one
        if the folder holds none."""
        if (Path(folder) / cls.META).exists():
            return cls.load(folder, expected())
        return build()

    def size_bytes(self) -> int:
        return (self.folder / self.FILE).stat().st_size  # type: ignore[attr-defined]


def refuse_augmentation(augmentation: str) -> None:
    if augmentation != "none":
        raise CacheMismatchError(
            "teacher cache: outputs under random augmentation differ at every epoch, so a per-sample "
            "cache would be wrong. Turn augmentation off, or set teacher.cache_outputs and "
            "teacher.cache_features to false.")


def id_batches(inputs, batch_size: int):
    """(ids (b,), inputs (b, ...)) in id order, from a tensor (N, ...) or an object with
    `id_batches(batch_size)` (a streamed split; samples that fail to decode are absent)."""
    if isinstance(inputs, torch.Tensor):
        for i in range(0, inputs.shape[0], batch_size):
            yield torch.arange(i, min(i + batch_size, inputs.shape[0])), inputs[i:i + batch_size]
    else:
        yield from inputs.id_batches(batch_size)


def num_inputs(inputs) -> int:
    return int(inputs.shape[0]) if isinstance(inputs, torch.Tensor) else len(inputs)


def _scatter(parts: list[tuple[torch.Tensor, torch.Tensor]], n: int) -> torch.Tensor:
    """Rows (ids, values) gathered into one (n, ...) tensor (rows never written stay zero)."""
    first = parts[0][1]
    out = torch.zeros((n, *first.shape[1:]), dtype=first.dtype)
    for ids, v in parts:
        out[ids] = v
    return out


class TeacherCache(CheckedCache):
    FILE, WHAT = "outputs.safetensors", "teacher cache"

    def __init__(self, folder: Path, meta: dict[str, Any], tensors: dict[str, torch.Tensor]):
        self.folder, self.meta = folder, meta
        self.indices = tensors["indices"].long()      # (N, k)
        self.logits = tensors["logits"]               # (N, k) fp16
        self.lse = tensors["lse"]                     # (N,) fp32: logsumexp(z / T)

    @staticmethod
    def expected_meta(teacher: Teacher, data_hash: str, temperature: float, k: int, num_samples: int,
                      augmentation: str = "none") -> dict[str, Any]:
        return {"format": CACHE_FORMAT, "teacher": teacher.fingerprint(), "data": data_hash,
                "temperature": float(temperature), "k": int(k), "augmentation": augmentation,
                "num_samples": int(num_samples)}

    @classmethod
    def build(cls, folder: str | os.PathLike, teacher: Teacher, inputs: torch.Tensor, *, data_hash: str,
              temperature: float, k: int, augmentation: str = "none", batch_size: int = 512,
              device: str | torch.device = "cpu") -> TeacherCache:
        """Run the teacher once over `inputs` (N, ...) in id order and write the cache."""
        from distill.models.outputs import logits_of

        refuse_augmentation(augmentation)
        folder = Path(folder)
        n = num_inputs(inputs)
        idx_l, logit_l, lse_l = [], [], []
        for ids, xb in id_batches(inputs, batch_size):
            z = logits_of(teacher(xb.to(device))).float().cpu()  # (b, C)
            kk = min(k, z.shape[-1])
            top = z.topk(kk, dim=-1)
            idx_l.append((ids, top.indices.int()))
            logit_l.append((ids, top.values.half()))
            lse_l.append((ids, torch.logsumexp(z / temperature, dim=-1)))
        tensors = {"indices": _scatter(idx_l, n), "logits": _scatter(logit_l, n), "lse": _scatter(lse_l, n)}
        meta = cls.expected_meta(teacher, data_hash, temperature, k, n, augmentation)
        meta = write_checked(folder, cls.FILE, cls.META, tensors, meta)
        return cls(folder, meta, tensors)

    @classmethod
    def load_or_build(cls, folder: str | os.PathLike, teacher: Teacher, inputs: torch.Tensor, *, data_hash: str,
                      temperature: float, k: int, augmentation: str = "none", **kw) -> TeacherCache:
        """Reuse a matching cache; build one if the folder is empty; refuse a mismatching one."""
        return cls.open_or_build(
            folder, lambda: cls.expected_meta(teacher, data_hash, temperature, k, num_inputs(inputs), augmentation),
            lambda: cls.build(folder, teacher, inputs, data_hash=data_hash, temperature=temperature, k=k,
                              augmentation=augmentation, **kw))

    @property
    def temperature(self) -> float:
        return float(self.meta["temperature"])

    def lookup_batch(self, batch: dict[str, torch.Tensor], device=None) -> CachedOutputs:
        return self.lookup(batch["idx"], device=device)

    def lookup(self, ids: torch.Tensor, device: str | torch.device | None = None) -> CachedOutputs:
        """Top-k indices and log-probs at the cache temperature for sample ids (B,)."""
        ids = ids.cpu()
        z = self.logits[ids].float()
        logprobs = z / self.temperature - self.lse[ids].unsqueeze(-1)
        out = CachedOutputs(self.indices[ids], logprobs)
        if device is not None:
            out = CachedOutputs(out.indices.to(device), out.logprobs.to(device))
        return out


TeacherPass = Callable[[torch.Tensor], "tuple[torch.Tensor, list[torch.Tensor]]"]


class FeatureCache(CheckedCache):
    """The teacher's logits (N, C) and tapped layer outputs (N, ...) per sample id, stored in fp16
    (logits in fp32). Disk and memory: N x (C + the tapped sizes) values; `estimate_bytes` tells
    before building. `run` is the method's own teacher pass (x -> logits, [features]), so the
    cache holds exactly what the method would have read from the live teacher."""

    FILE, WHAT = "features.safetensors", "teacher feature cache"

    def __init__(self, folder: Path, meta: dict[str, Any], tensors: dict[str, torch.Tensor]):
        self.folder, self.meta = folder, meta
        self.layers: list[str] = list(meta["layers"])
        self.logits = tensors["logits"]                                    # (N, C) fp32
        self.features = [tensors[f"layer{i}"] for i in range(len(self.layers))]  # (N, ...) fp16

    @staticmethod
    def expected_meta(teacher: Teacher, data_hash: str, layers: Sequence[str], num_samples: int,
                      augmentation: str = "none") -> dict[str, Any]:
        return {"format": CACHE_FORMAT, "kind": "features", "teacher": teacher.fingerprint(), "data": data_hash,
                "layers": list(layers), "augmentation": augmentation, "num_samples": int(num_samples),
                "dtype": "float16"}

    @staticmethod
    def estimate_bytes(run: TeacherPass, example: torch.Tensor, num_samples: int) -> int:
        """Size of the cache for `num_samples` inputs, from one example batch (B, ...)."""
        logits, feats = run(example)
        per = logits[0].numel() * 4 + sum(f[0].numel() * 2 for f in feats)
        return int(per * num_samples)

    @classmethod
    def build(cls, folder: str | os.PathLike, run: TeacherPass, inputs: torch.Tensor, *, teacher: Teacher,
              data_hash: str, layers: Sequence[str], augmentation: str = "none", batch_size: int = 256,
              device: str | torch.device = "cpu") -> FeatureCache:
        """Run `run` once over `inputs` (N, ...) in id order and write the cache."""
        refuse_augmentation(augmentation)
        n = num_inputs(inputs)
        logit_l: list = []
        feat_l: list[list] = [[] for _ in layers]
        with torch.no_grad():
            for ids, xb in id_batches(inputs, batch_size):
                logits, feats = run(xb.to(device))
                if len(feats) != len(layers):
                    raise ValueError(f"feature cache: the teacher pass gave {len(feats)} features for {len(layers)} layers")
                logit_l.append((ids, logits.float().cpu()))
                for acc, f in zip(feat_l, feats):
                    acc.append((ids, f.detach().half().cpu()))
        tensors = {"logits": _scatter(logit_l, n), **{f"layer{j}": _scatter(acc, n) for j, acc in enumerate(feat_l)}}
        meta = cls.expected_meta(teacher, data_hash, layers, n, augmentation)
        meta = write_checked(Path(folder), cls.FILE, cls.META, tensors, meta)
        return cls(Path(folder), meta, tensors)

    @classmethod
    def load_or_build(cls, folder: str | os.PathLike, run: TeacherPass, inputs: torch.Tensor, *, teacher: Teacher,
                      data_hash: str, layers: Sequence[str], augmentation: str = "none", **kw) -> FeatureCache:
        """Reuse a matching cache; build one if the folder is empty; refuse a mismatching one."""
        return cls.open_or_build(
            folder, lambda: cls.expected_meta(teacher, data_hash, layers, num_inputs(inputs), augmentation),
            lambda: cls.build(folder, run, inputs, teacher=teacher, data_hash=data_hash, layers=layers,
                              augmentation=augmentation, **kw))

    def lookup(self, ids: torch.Tensor, device: str | torch.device | None = None
               ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Teacher logits (B, C) and features [(B, ...)] as float32 for sample ids (B,)."""
        ids = ids.cpu()
        logits = self.logits[ids]
        feats = [f[ids].float() for f in self.features]
        if device is not None:
            logits, feats = logits.to(device), [f.to(device) for f in feats]
        return logits, feats
