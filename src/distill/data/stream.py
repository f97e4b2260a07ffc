"""Data that streams: sample sources read one item at a time, views made per (epoch, sample id),
and a torch DataLoader over them with workers, pinned memory and a fresh shuffle every epoch.

    source = ImageFolderSource("data/train")            # or HFImageSource, TensorSource
    views = ViewDataset(source, transform, seed=0)
    loader = StreamLoader(views, batch_size=64, shuffle=True, seed=0, num_workers=4)
    for epoch in range(E):
        loader.set_epoch(epoch)
        for batch in loader: ...                        # {"x", "y", "idx", "epoch", "view"}

The sampler yields (epoch, id) pairs, so the view of a sample depends on the run seed, the epoch
and the id only: different in every epoch, identical after a resume, in any worker. An image that
will not decode is skipped (its batch is one smaller) and counted in `ViewDataset.skipped`.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from distill.data.base import BatchSampler, tensor_fingerprint
from distill.data.transforms import ViewTransform, sample_seed
from distill.errors import ConfigError

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class DecodeError(Exception):
    pass


def decode_image(file, what: str):
    """A PIL image read fully from a path or file object; DecodeError if it will not decode."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as im:
            im.load()
            return im.copy()
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DecodeError(f"{what}: {e}") from None


class TensorSource:
    """Samples held in memory as tensors (N, C, H, W) in [0, 1] (or uint8), with labels (N,)."""

    def __init__(self, x: Tensor, y: Tensor):
        self.x, self.labels = x, y.long()

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def get(self, i: int):
        return self.x[i]

    def fingerprint(self) -> str:
        return tensor_fingerprint(self.x, self.labels)


class ImageFolderSource:
    """root/<class>/<image> read from disk on demand (nothing is loaded into memory up front)."""

    def __init__(self, root: str | Path, classes: Sequence[str] | None = None):
        root = Path(root)
        if not root.is_dir():
            raise ConfigError(f"data.params.root: {str(root)!r} is not a folder (expected root/<class>/<image>).")
        self.classes = list(classes) if classes is not None else sorted(p.name for p in root.iterdir() if p.is_dir())
        if not self.classes:
            raise ConfigError(f"data.params.root: no class folders in {root} (expected root/<class>/<image>).")
        files, labels = [], []
        for c, name in enumerate(self.classes):
            folder = root / name
            if not folder.is_dir():
                continue
            for p in sorted(folder.rglob("*")):
                if p.suffix.lower() in EXTENSIONS and p.is_file():
                    files.append(p)
                    labels.append(c)
        if not files:
            raise ConfigError(f"data.params.root: no images ({', '.join(sorted(EXTENSIONS))}) under {root}/<class>/.")
        self.root, self.files, self.labels = root, files, torch.tensor(labels, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.files)

    def get(self, i: int):
        return decode_image(self.files[i], str(self.files[i]))

    def fingerprint(self) -> str:
        """Paths (relative), sizes and modification times: changes when any file does."""
        h = hashlib.sha256()
        for p, y in zip(self.files, self.labels.tolist()):
            st = p.stat()
            h.update(f"{p.relative_to(self.root)}|{st.st_size}|{st.st_mtime_ns}|{y}\n".encode())
        return h.hexdigest()[:16]


class HFImageSource:
    """A Hugging Face `datasets` split: image and label columns named in the recipe."""

    def __init__(self, ds, image_column: str = "image", label_column: str = "label"):
        missing = [c for c in (image_column, label_column) if c not in ds.column_names]
        if missing:
            raise ConfigError(f"data.params: the data set has no column {missing[0]!r}; its columns are "
                              f"{', '.join(ds.column_names)} (set image_column / label_column).")
        self.ds, self.image_column, self.label_column = ds, image_column, label_column
        self.labels = torch.tensor(ds[label_column], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.ds)

    def get(self, i: int):
        try:
            return self.ds[int(i)][self.image_column]
        except (OSError, ValueError) as e:
            raise DecodeError(f"row {i}: {e}") from None

    def fingerprint(self) -> str:
        fp = getattr(self.ds, "_fingerprint", None) or str(len(self.ds))
        return hashlib.sha256(f"{fp}|{self.image_column}|{self.label_column}".encode()).hexdigest()[:16]


class TarShardSource:
    """WebDataset tar shards (`shard-{000..009}.tar`: members `<key>.<ext>`, one key per sample) read
    by random access: the shards are indexed once (member offsets, no image is decoded), then each
    sample's image is read from its offset on demand. The label is the `.cls` member (an integer)."""

    IMAGE_EXT = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "tif", "tiff")

    def __init__(self, urls: str | Sequence[str], label_key: str = "cls", image_key: str | None = None):
        import tarfile

        try:
            from webdataset.shardlists import expand_urls
        except ImportError:
            raise ConfigError("data: webdataset shards need the `webdataset` package (pip install 'distill[data]').") from None
        paths = [Path(p).expanduser() for u in ([urls] if isinstance(urls, str) else urls) for p in expand_urls(u)]
        missing = [str(p) for p in paths if not p.is_file()]
        if not paths or missing:
            raise ConfigError(f"data.params: shard {missing[0] if missing else urls!r} does not exist.")
        self.paths = paths
        self.entries: list[tuple[int, int, int]] = []  # (shard, offset, size) of each sample's image
        labels: list[int] = []
        for si, path in enumerate(paths):
            groups: dict[str, dict[str, tarfile.TarInfo]] = {}
            with tarfile.open(path) as tar:
                for m in tar.getmembers():
                    if not m.isfile() or "." not in m.name.rsplit("/", 1)[-1]:
                        continue
                    folder, _, base = m.name.rpartition("/")
                    stem, _, ext = base.partition(".")  # webdataset's convention: the key ends at the first dot
                    key = f"{folder}/{stem}" if folder else stem
                    groups.setdefault(key, {})[ext.lower()] = m
                for key, members in groups.items():
                    img = members.get(image_key) if image_key else next(
                        (members[e] for e in self.IMAGE_EXT if e in members), None)
                    if img is None or label_key not in members:
                        continue
                    f = tar.extractfile(members[label_key])
                    labels.append(int(f.read().decode().strip()))
                    self.entries.append((si, img.offset_data, img.size))
        if not self.entries:
            raise ConfigError(f"data.params: no samples with an image and a .{label_key} label in {urls!r}.")
        self.labels = torch.tensor(labels, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, i: int):
        import io

        si, off, size = self.entries[i]
        with open(self.paths[si], "rb") as f:
            f.seek(off)
            data = f.read(size)
        return decode_image(io.BytesIO(data), f"{self.paths[si]} sample {i}")

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for p in self.paths:
            st = p.stat()
            h.update(f"{p.name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        return h.hexdigest()[:16]


class Subset:
    """Rows `ids` of a source (a held-out split), with their own ids 0..n-1."""

    def __init__(self, source, ids: Tensor):
        self.source, self.ids = source, ids.long()
        self.labels = source.labels[self.ids]

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def get(self, i: int):
        return self.source.get(int(self.ids[i]))

    def fingerprint(self) -> str:
        return hashlib.sha256((self.source.fingerprint() + str(self.ids.tolist())).encode()).hexdigest()[:16]


class ViewDataset(torch.utils.data.Dataset):
    """Map-style data set over a source: item (epoch, id) is a train view, item id (or epoch -1) the
    eval view. `labels` may hide labels (-1) from the learner. `replay[epoch]` (E, N, 5), when set,
    supplies recorded crop/flip records instead of drawing them."""

    def __init__(self, source, transform: ViewTransform, *, seed: int = 0, train: bool = True,
                 labels: Tensor | None = None):
        self.source, self.transform, self.seed, self.train = source, transform, seed, train
        self.labels = source.labels if labels is None else labels
        self.replay: Tensor | None = None
        self.skipped = 0

    def __len__(self) -> int:
        return len(self.source)

    @property
    def y(self) -> Tensor:
        return self.labels

    def with_labels(self, labels: Tensor) -> ViewDataset:
        out = ViewDataset(self.source, self.transform, seed=self.seed, train=self.train, labels=labels)
        return out

    def as_eval(self) -> ViewDataset:
        return ViewDataset(self.source, self.transform, seed=self.seed, train=False, labels=self.labels)

    def fingerprint(self) -> str:
        return self.source.fingerprint()

    def __getitem__(self, key) -> dict[str, Any] | None:
        epoch, i = key if isinstance(key, tuple) else (-1, key)
        i = int(i)
        try:
            img = self.source.get(i)
        except DecodeError:
            return None
        if self.train and epoch >= 0:
            seed = sample_seed(self.seed, epoch, i)
            if self.replay is not None:
                record = tuple(int(v) for v in self.replay[epoch, i])
                x = self.transform.replay(self.transform._geometry(self.transform._to_image(img)), record, seed)
            else:
                x, record = self.transform.view(img, seed)
        else:
            x, record = self.transform.eval(img), (0, 0, 0, 0, 0)
        return {"x": x, "y": int(self.labels[i]), "idx": i, "epoch": epoch, "view": record}


def collate(items: list[dict[str, Any] | None]) -> dict[str, Tensor] | None:
    """Stack samples into a batch; samples that failed to decode (None) are dropped."""
    items = [it for it in items if it is not None]
    if not items:
        return None
    return {"x": torch.stack([it["x"] for it in items]),
            "y": torch.tensor([it["y"] for it in items], dtype=torch.long),
            "idx": torch.tensor([it["idx"] for it in items], dtype=torch.long),
            "epoch": torch.tensor([it["epoch"] for it in items], dtype=torch.long),
            "view": torch.tensor([it["view"] for it in items], dtype=torch.int32)}


class _EpochBatches(torch.utils.data.Sampler):
    """Batches of (epoch, id) keys from a BatchSampler; starts at `start` batches into the epoch."""

    def __init__(self, sampler: BatchSampler, train: bool):
        self.sampler, self.train, self.start = sampler, train, 0

    def __len__(self) -> int:
        return len(self.sampler) - self.start

    def __iter__(self) -> Iterator[list]:
        e = self.sampler.epoch if self.train else -1
        for b, chunk in enumerate(self.sampler):
            if b < self.start:
                continue
            yield [(e, int(i)) for i in chunk]


class StreamLoader:
    """A torch DataLoader over a ViewDataset, batch order fixed by (seed, epoch) and split across
    processes like `TensorLoader`; `resume_at(b)` starts the current epoch at batch b without
    reading the batches before it. Batches that lost every sample to decoding errors are skipped."""

    def __init__(self, dataset: ViewDataset, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, rank: int = 0, world: int = 1, num_workers: int = 0,
                 pin_memory: bool = False, prefetch_factor: int | None = None, persistent_workers: bool = False,
                 mix=None):
        self.dataset, self.mix = dataset, mix
        self.sampler = BatchSampler(len(dataset), batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last,
                                    rank=rank, world=world)
        self._keys = _EpochBatches(self.sampler, dataset.train)
        kw: dict[str, Any] = {}
        if num_workers > 0:
            kw.update(prefetch_factor=prefetch_factor or 2, persistent_workers=persistent_workers)
        self.loader = torch.utils.data.DataLoader(dataset, batch_sampler=self._keys, collate_fn=collate,
                                                  num_workers=num_workers, pin_memory=pin_memory, **kw)

    @property
    def batch_size(self) -> int:
        return self.sampler.batch_size

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)
        self._keys.start = 0

    def resume_at(self, batch: int) -> None:
        self._keys.start = batch

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        for b, batch in enumerate(self.loader, start=self._keys.start):
            if batch is not None:
                yield batch if self.mix is None else self.mix(batch, self.sampler.epoch, b)
        self._keys.start = 0
