"""A teacher-output cache that works with random augmentation, as FKD (Shen & Xing 2022, "A Fast
Knowledge Distillation Framework for Visual Recognition") and SRe2L's relabelling do.

For every epoch e and sample id i it records the view the student will see (crop box and flip:
`(top, left, height, width, flip)`, from `ViewTransform.draw`) and the teacher's top-k logits on
that view (and the log-sum-exp at T, so the top-k log-probs and the tail mass are exact). Later runs
replay exactly those views to the student (`ViewDataset.replay`) and read the soft labels by
(epoch, id): no teacher forward while training.

Only geometric augmentation can be replayed this way: photometric policies (RandAugment,
TrivialAugment) are refused, and methods then run the live teacher. A cache made with other
transforms, epochs, seed, teacher, data, temperature or k is refused.

Size: epochs x N x (k x 2 (fp16) or 4 (fp32) + k x 2 (indices) + 4 + 20) bytes.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from distill.data.stream import StreamLoader, ViewDataset
from distill.models.outputs import logits_of
from distill.teacher import CACHE_FORMAT, CachedOutputs, CheckedCache, Teacher, write_checked


def transform_key(views: ViewDataset) -> str:
    """Identifies what makes a view: the transform settings, output size and normalisation."""
    t = views.transform
    spec = {"cfg": t.cfg.model_dump(mode="json"), "size": t.size, "resize": t.resize, "mean": t.mean, "std": t.std}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


class ViewTeacherCache(CheckedCache):
    FILE, WHAT = "views.safetensors", "augmentation-aware teacher cache"

    def __init__(self, folder: Path, meta: dict[str, Any], tensors: dict[str, torch.Tensor]):
        self.folder, self.meta = folder, meta
        self.views = tensors["views"]               # (E, N, 5) int32: top, left, height, width, flip
        self.indices = tensors["indices"].long()    # (E, N, k)
        self.logits = tensors["logits"]             # (E, N, k) fp16 or fp32
        self.lse = tensors["lse"]                   # (E, N) fp32: logsumexp(z / T) over all classes

    @staticmethod
    def expected_meta(teacher: Teacher, views: ViewDataset, *, epochs: int, temperature: float, k: int,
                      dtype: str) -> dict[str, Any]:
        return {"format": CACHE_FORMAT, "kind": "views", "teacher": teacher.fingerprint(), "data": views.fingerprint(),
                "transforms": transform_key(views), "seed": int(views.seed), "epochs": int(epochs),
                "temperature": float(temperature), "k": int(k), "num_samples": len(views), "dtype": dtype}

    @classmethod
    def build(cls, folder: str | os.PathLike, teacher: Teacher, views: ViewDataset, *, epochs: int,
              temperature: float, k: int, dtype: str = "float16", batch_size: int = 256, num_workers: int = 0,
              device: str | torch.device = "cpu", progress: bool = True) -> ViewTeacherCache:
        """Run the teacher on every sample's view of every epoch and write the cache."""
        from distill.utils import ProgressBar

        n = len(views)
        src = ViewDataset(views.source, views.transform, seed=views.seed, train=True)  # labels do not matter
        store = torch.float16 if dtype == "float16" else torch.float32
        loader = StreamLoader(src, batch_size, shuffle=False, num_workers=num_workers)
        rec = torch.zeros(epochs, n, 5, dtype=torch.int32)
        idx_t = lse_t = logit_t = None
        bar = ProgressBar(progress, "teacher views", epochs * len(loader)).start()
        done = 0
        try:
            for e in range(epochs):
                loader.set_epoch(e)
                for b in loader:
                    z = logits_of(teacher(b["x"].to(device))).float().cpu()   # (b, C)
                    kk = min(k, z.shape[-1])
                    if idx_t is None:
                        idx_t = torch.zeros(epochs, n, kk, dtype=torch.int16 if z.shape[-1] < 2**15 else torch.int32)
                        logit_t = torch.zeros(epochs, n, kk, dtype=store)
                        lse_t = torch.zeros(epochs, n)
                    top = z.topk(kk, dim=-1)
                    ids = b["idx"]
                    rec[e, ids] = b["view"]
                    idx_t[e, ids] = top.indices.to(idx_t.dtype)
                    logit_t[e, ids] = top.values.to(store)
                    lse_t[e, ids] = torch.logsumexp(z / temperature, dim=-1)
                    done += 1
                    bar.update(done)
        finally:
            bar.close()
        tensors = {"views": rec, "indices": idx_t, "logits": logit_t, "lse": lse_t}
        meta = cls.expected_meta(teacher, views, epochs=epochs, temperature=temperature, k=k, dtype=dtype)
        meta = write_checked(Path(folder), cls.FILE, cls.META, tensors, meta)
        return cls(Path(folder), meta, tensors)

    @classmethod
    def load_or_build(cls, folder: str | os.PathLike, teacher: Teacher, views: ViewDataset, *, epochs: int,
                      temperature: float, k: int, dtype: str = "float16", **kw) -> ViewTeacherCache:
        return cls.open_or_build(
            folder, lambda: cls.expected_meta(teacher, views, epochs=epochs, temperature=temperature, k=k, dtype=dtype),
            lambda: cls.build(folder, teacher, views, epochs=epochs, temperature=temperature, k=k, dtype=dtype, **kw))

    @property
    def temperature(self) -> float:
        return float(self.meta["temperature"])

    def lookup_batch(self, batch: dict[str, torch.Tensor], device=None) -> CachedOutputs:
        """Top-k indices and log-probs at T for the batch's (epoch, id) views."""
        e, ids = batch["epoch"].cpu().long(), batch["idx"].cpu().long()
        if "view" in batch and not torch.equal(batch["view"].cpu().int(), self.views[e, ids]):
            raise RuntimeError("augmentation-aware cache: the batch's views are not the recorded ones "
                               "(ViewDataset.replay was not set to the cache's views)")
        z = self.logits[e, ids].float()
        out = CachedOutputs(self.indices[e, ids], z / self.temperature - self.lse[e, ids].unsqueeze(-1))
        if device is not None:
            out = CachedOutputs(out.indices.to(device), out.logprobs.to(device))
        return out
