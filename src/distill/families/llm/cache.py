"""The offline teacher cache of the llm family: the teacher's top-k next-token log-probs per target
token, so `token_kd` can train without running the teacher.

Per example (keyed by a digest of its tokens and its first target index) the cache holds, for each
target position in order: the top-k indices (int32), their log-probs at the distillation temperature
(fp16, normalised over the whole vocabulary) and the exact log of the remaining tail mass (fp32), so
the tail bucket of `sparse_divergence` is exact. Packing never lets attention cross examples, so
one cache serves packed and unpacked rows alike.

With `teacher.cache_format: compressed` the records are those of `distill.families.llm.compress`
instead (`CompressedLMTeacherCache`): the tokens with p >= cache_min_prob among the top k,
sqrt-domain codes of cache_bits bits and the exact tail mass, packed per example (deflate, or lzma
with `cache_coder: lzma`); its metadata also holds the storage format and the codec's parameters,
so a cache made with others is refused.

Files: `outputs.safetensors` (tensors) and `meta.json` (teacher fingerprint, tokenizer hash, data
hash, temperature, k, seq_len, vocab size, token count, sha256 of the tensor file). A cache whose
metadata differs from the run, or whose checksum fails, is refused with `CacheMismatchError`
naming the field.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.errors import CacheMismatchError
from distill.families.llm.data import IGNORE, Example, collate
from distill.families.llm.models import hidden_states, output_head
from distill.losses.divergences import Kind, sparse_divergence
from distill.losses.lm import LogitMap, chunked_rows_sum, head_topk
from distill.teacher import CheckedCache, Teacher, write_checked
from distill.utils import hash_json

LM_CACHE_FORMAT = 1
_FLOOR = -1.0e4  # log of an empty tail (k = vocab)


def example_key(ids: Sequence[int], start: int, positions: Sequence[int] | None = None) -> bytes:
    """16-byte digest of an example's tokens and its first target index, and of its target label
    positions when they are not the one run from `start` on (chat data with several replies)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(int(start).to_bytes(4, "little"))
    h.update(torch.tensor(list(ids), dtype=torch.int64).numpy().tobytes())
    if positions is not None:
        h.update(b"targets")
        h.update(torch.tensor(list(positions), dtype=torch.int64).numpy().tobytes())
    return h.digest()


def key_of(ex: Example) -> bytes:
    return example_key(ex.ids, max(ex.start, 1), ex.target_positions())


def tokenizer_hash(tok) -> str:
    """Hash of the vocabulary (token -> id) and the special-token ids."""
    special = {k: getattr(tok, k, None) for k in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")}
    return hash_json({"vocab": sorted(tok.get_vocab().items(), key=lambda kv: kv[1]), "special": special,
                      "template": getattr(tok, "chat_template", None)})


def keys_hash(keys: Sequence[bytes]) -> str:
    """16 hex digits of a sequence of example keys (a cache's data identity)."""
    h = hashlib.sha256()
    for k in keys:
        h.update(k)
    return h.hexdigest()[:16]


def data_hash(examples: Sequence[Example]) -> str:
    return keys_hash([key_of(ex) for ex in examples])


def record_index(keys: Sequence[bytes], counts: Sequence[int]) -> dict[str, Tensor]:
    """The tensors that locate each example's rows in a cache file: `offsets` (E + 1,) int64 (the
    rows of example e are offsets[e]:offsets[e + 1]) and `keys` (E, 16) uint8."""
    return {"offsets": torch.tensor([0, *counts], dtype=torch.int64).cumsum(0),
            "keys": torch.tensor([list(k) for k in keys], dtype=torch.uint8).reshape(-1, 16)}


def rows_of_keys(tensors: dict[str, Tensor]) -> dict[bytes, tuple[int, int]]:
    """key -> (first row, end row) from `record_index`'s tensors."""
    offsets, keys = tensors["offsets"].tolist(), tensors["keys"].numpy()
    return {bytes(keys[e]): (offsets[e], offsets[e + 1]) for e in range(len(keys))}


def _unique(examples: Sequence[Example]) -> list[Example]:
    seen: set[bytes] = set()
    out = []
    for ex in examples:
        k = key_of(ex)
        if k not in seen and ex.has_targets():
            seen.add(k)
            out.append(ex)
    return out


def _teacher_topk(teacher: Teacher, exs: Sequence[Example], *, temperature: float, k: int, batch_size: int,
                  device, progress: bool = False):
    """Per distinct example, in order: (example, top-k indices (n, k), log-probs (n, k) fp32, exact log
    tail (n,)) at its counted positions, the teacher run one example per row (unpacked)."""
    from distill.utils import ProgressBar

    wt, bt, ft = output_head(teacher.module)
    with ProgressBar(progress, "teacher cache", len(exs)) as bar:
        for i in range(0, len(exs), batch_size):
            chunk = exs[i:i + batch_size]
            batch = {key: v.to(device) for key, v in collate([[e] for e in chunk], 0, packed=False).items()}
            mask = batch["labels"] != IGNORE  # (B, T); row-major order = example order, then position
            with torch.no_grad():
                h = hidden_states(teacher.module, batch)[mask]                          # (n, D)
                # (n, V) log-probs 1024 rows at a time: one block of the vocabulary, not the batch's
                ids, lps, rest = head_topk(h, wt, bt, ft, k=k, temperature=temperature, tail_floor=_FLOOR)
            r = 0
            for e, n in zip(chunk, mask.sum(1).tolist()):
                yield e, ids[r:r + n].cpu(), lps[r:r + n].cpu(), rest[r:r + n].cpu()
                r += n
            bar.update(i + len(chunk))


class LMTeacherCache(CheckedCache):
    """The `exact` format: per target token, top-k int32 ids, fp16 log-probs and the fp32 log tail."""
    FILE, WHAT = "outputs.safetensors", "LM teacher cache"
    FORMAT = "exact"

    def __init__(self, folder: Path, meta: dict[str, Any], tensors: dict[str, Tensor]):
        self.folder, self.meta = folder, meta
        self.indices = tensors["indices"]      # (N, k) int32
        self.logprobs = tensors["logprobs"]    # (N, k) fp16, at the cache temperature
        self.log_tail = tensors["log_tail"]    # (N,) fp32: log(1 - sum of the top-k probabilities)
        self._where = rows_of_keys(tensors)    # example key -> its rows (`record_index`)

    @classmethod
    def expected_meta(cls, teacher: Teacher, tok, examples: Sequence[Example], *, temperature: float, k: int,
                      seq_len: int, **codec) -> dict[str, Any]:
        meta = {"format": LM_CACHE_FORMAT, "teacher": teacher.fingerprint(), "tokenizer": tokenizer_hash(tok),
                "data": data_hash(examples), "temperature": float(temperature), "k": int(k), "seq_len": int(seq_len)}
        if cls.FORMAT != "exact":  # the exact format's metadata stays as it was (older caches stay valid)
            meta.update(storage=cls.FORMAT, **codec)
        return meta

    @classmethod
    def build(cls, folder: str | os.PathLike, teacher: Teacher, tok, examples: Sequence[Example], *,
              temperature: float, k: int, seq_len: int, batch_size: int = 16,
              device: str | torch.device = "cpu", progress: bool = False, **codec) -> LMTeacherCache:
        """Run the teacher once over every distinct example (one per row, unpacked; a progress bar
        with `progress`) and write the cache."""
        folder = Path(folder)
        codec = cls._codec(**codec)
        coder = codec.pop("coder", None)  # how the records are packed: read back from the metadata, not matched
        exs = _unique(examples)
        vocab = int(output_head(teacher.module)[0].shape[0])
        tensors, counts = cls._encode(_teacher_topk(teacher, exs, temperature=temperature, k=k, batch_size=batch_size,
                                                    device=device, progress=progress), vocab, k, **codec,
                                    **({"coder": coder} if coder else {}))
        tensors.update(record_index([key_of(e) for e in exs], counts))
        offsets = tensors["offsets"]
        meta = cls.expected_meta(teacher, tok, examples, temperature=temperature, k=k, seq_len=seq_len, **codec)
        meta.update(vocab_size=vocab, tokens=int(offsets[-1]), examples=len(exs),
                    packing="per example: valid for packed and unpacked rows", **({"coder": coder} if coder else {}))
        meta = write_checked(folder, cls.FILE, cls.META, tensors, meta)
        return cls(folder, meta, tensors)

    @staticmethod
    def _codec(**codec) -> dict[str, Any]:
        if codec:
            raise TypeError(f"the exact LM cache format takes no codec parameters, got {sorted(codec)}")
        return {}

    @staticmethod
    def _encode(records, vocab_size: int, k: int, **codec) -> tuple[dict[str, Tensor], list[int]]:
        idx_l, lp_l, tail_l, counts = [], [], [], []
        for _, idx, lp, tail in records:
            idx_l.append(idx.int())
            lp_l.append(lp.half())
            tail_l.append(tail)
            counts.append(idx.shape[0])
        return {"indices": torch.cat(idx_l), "logprobs": torch.cat(lp_l), "log_tail": torch.cat(tail_l)}, counts

    @classmethod
    def load_or_build(cls, folder: str | os.PathLike, teacher: Teacher, tok, examples: Sequence[Example], *,
                      temperature: float, k: int, seq_len: int, **kw) -> LMTeacherCache:
        codec = cls._codec(**{key: kw.pop(key) for key in ("min_prob", "bits", "coder") if key in kw})
        matched = {key: v for key, v in codec.items() if key != "coder"}  # any coder reads back the same records
        return cls.open_or_build(
            folder, lambda: cls.expected_meta(teacher, tok, examples, temperature=temperature, k=k, seq_len=seq_len,
                                              **matched),
            lambda: cls.build(Path(folder), teacher, tok, examples, temperature=temperature, k=k, seq_len=seq_len,
                              **codec, **kw))

    # ------------------------------------------------------------------ reading
    @property
    def temperature(self) -> float:
        return float(self.meta["temperature"])

    def bytes_per_token(self) -> float:
        return self.size_bytes() / max(int(self.meta["tokens"]), 1)

    def _keys_of(self, batch: dict[str, Tensor]) -> list[tuple[bytes, int]]:
        """(example key, counted positions) of every example in a (packed or unpacked) batch, in the
        row-major order of `batch["labels"] != -100`."""
        ids, labels, seg = batch["input_ids"].cpu(), batch["labels"].cpu(), batch["seg"].cpu()
        out = []
        for b in range(ids.shape[0]):
            for j in seg[b].unique().tolist():
                if j == 0:
                    continue
                pos = (seg[b] == j).nonzero().squeeze(-1)
                counted = (labels[b, pos] != IGNORE).nonzero().squeeze(-1)
                if counted.numel() == 0:
                    continue
                start = int(counted[0]) + 1
                run = torch.arange(start - 1, pos.numel() - 1)
                same = counted.numel() == run.numel() and bool((counted == run).all())
                out.append((example_key(ids[b, pos].tolist(), start, None if same else counted.tolist()),
                            counted.numel()))
        return out

    def _missing(self) -> CacheMismatchError:
        return CacheMismatchError(f"LM teacher cache {self.folder}: an example of this batch is not in the cache "
                                  "(the data changed since it was built); delete the folder.")

    def lookup(self, batch: dict[str, Tensor]) -> tuple[Tensor, ...]:
        """(indices (n, k) long, log-probs (n, k) fp32, log tail (n,)) for the counted positions of a
        (packed or unpacked) batch, in the row-major order of `batch["labels"] != -100`."""
        spans = []
        for key, n in self._keys_of(batch):
            where = self._where.get(key)
            if where is None or where[1] - where[0] != n:
                raise self._missing()
            spans.append(where)
        rows = torch.cat([torch.arange(a, z) for a, z in spans]) if spans else torch.zeros(0, dtype=torch.long)
        return self.indices[rows].long(), self.logprobs[rows].float(), self.log_tail[rows]


class CompressedLMTeacherCache(LMTeacherCache):
    """The `compressed` format (`distill.families.llm.compress`): per example one deflated record of
    the tokens with p >= min_prob among the top k, sqrt-domain codes of `bits` bits and the exact
    tail mass. `lookup` gives a fourth tensor, `valid` (n, k'): the bins that hold a kept token."""
    FORMAT = "compressed"

    def __init__(self, folder: Path, meta: dict[str, Any], tensors: dict[str, Tensor]):
        from distill.families.llm.compress import Codec

        self.folder, self.meta = folder, meta
        self.codec = Codec(int(meta["k"]), int(meta["vocab_size"]), float(meta["min_prob"]), int(meta["bits"]),
                           meta.get("coder", "deflate"))  # caches written before `coder` existed are deflated
        self.blob = tensors["blob"].numpy()            # (bytes,) uint8: the records, one after another
        self.blob_offsets = tensors["blob_offsets"].tolist()  # (E + 1,)
        self._where = {key: (e, z - a) for e, (key, (a, z)) in enumerate(rows_of_keys(tensors).items())}

    @staticmethod
    def _codec(min_prob: float = 1e-5, bits: int = 8, coder: str = "deflate") -> dict[str, Any]:
        return {"min_prob": float(min_prob), "bits": int(bits), "coder": str(coder)}

    @staticmethod
    def _encode(records, vocab_size: int, k: int, *, min_prob: float, bits: int, coder: str = "deflate"
                ) -> tuple[dict[str, Tensor], list[int]]:
        from distill.families.llm.compress import Codec, encode

        codec = Codec(k, vocab_size, min_prob, bits, coder)  # type: ignore[arg-type]
        blobs, counts = [], []
        for _, idx, lp, tail in records:
            blobs.append(encode(codec, idx, lp, tail))
            counts.append(idx.shape[0])
        sizes = torch.tensor([0] + [len(b) for b in blobs], dtype=torch.int64)
        blob = torch.frombuffer(bytearray(b"".join(blobs)), dtype=torch.uint8) if blobs else torch.zeros(0, dtype=torch.uint8)
        return {"blob": blob, "blob_offsets": sizes.cumsum(0)}, counts

    def lookup(self, batch: dict[str, Tensor]) -> tuple[Tensor, ...]:
        """(indices (n, k') long, log-probs (n, k') fp32, log tail (n,), valid (n, k') bool), k' the
        most kept tokens of any of these positions; bins past a position's kept tokens are not valid."""
        from distill.families.llm.compress import LOG_FLOOR, decode

        parts = []
        for key, n in self._keys_of(batch):
            where = self._where.get(key)
            if where is None or where[1] != n:
                raise self._missing()
            e = where[0]
            parts.append(decode(self.codec, self.blob[self.blob_offsets[e]:self.blob_offsets[e + 1]].data))
        if not parts:
            z = torch.zeros(0, 1)
            return z.long(), z, torch.zeros(0), z.bool()
        width = max(p[0].shape[1] for p in parts)

        def pad(t, value):
            return F.pad(t, (0, width - t.shape[1]), value=value)
        return (torch.cat([pad(p[0], 0) for p in parts]), torch.cat([pad(p[1], LOG_FLOOR) for p in parts]),
                torch.cat([p[2] for p in parts]), torch.cat([pad(p[3], False) for p in parts]))


def cached_divergence_sum(student_hidden: Tensor, student_head: Tensor, student_bias: Tensor | None,
                          cached: tuple[Tensor, Tensor, Tensor], mask: Tensor, kind: Kind, *, vocab_size: int,
                          temperature: float, beta: float = 0.5, alpha: float = 0.1, chunk_size: int = 1024,
                          logit_map: LogitMap | None = None) -> Tensor:
    """Sum over counted positions of the divergence to the cached teacher, from student hidden states
    (B, T, D), head (V, D) and output transform `logit_map`; the student's logits exist one chunk
    of positions at a time. Student rows past the teacher's vocabulary (padding) are dropped, as in
    the in-process loss."""
    idx, lp, tail, *rest = (t.to(student_hidden.device) for t in cached)
    valid = rest[0] if rest else None  # the compressed format: bins that hold a kept token
    h = student_hidden[mask]  # (n, D)
    v = min(vocab_size, student_head.shape[0])
    w, b = student_head[:v], (student_bias[:v] if student_bias is not None else None)

    def row_loss(z: Tensor, i: int, j: int) -> Tensor:
        return sparse_divergence(z, idx[i:j], lp[i:j], kind, temperature=temperature, beta=beta, alpha=alpha,
                                 teacher_log_tail=tail[i:j], teacher_valid=valid[i:j] if valid is not None else None,
                                 reduction="none")
    return chunked_rows_sum(h, w, b, row_loss, logit_map=logit_map, chunk_size=chunk_size)


def attach_cache(method, cfg, teacher: Teacher, tok, examples: Sequence[Example], device, log) -> None:
    """Give `method` (one with `reads_teacher_cache`) the cache of `examples` at its temperature,
    building it on the main process first; the others then read it."""
    from distill.dist import barrier, is_main, world_size

    if hasattr(method, "accept_teacher_targets"):  # refused before the teacher pass, not after
        method.accept_teacher_targets("the teacher cache (teacher.cache_top_k)")
    k, t = int(cfg.teacher.cache_top_k), float(getattr(method, "temperature", 1.0))
    kind = getattr(cfg.teacher, "cache_format", "exact")
    name = f"{teacher.fingerprint()}-{data_hash(examples)}-T{t}-k{k}"
    cls, codec = LMTeacherCache, {}
    if kind == "compressed":
        coder = getattr(cfg.teacher, "cache_coder", "deflate")
        cls, codec = CompressedLMTeacherCache, {"min_prob": float(cfg.teacher.cache_min_prob),
                                                "bits": int(cfg.teacher.cache_bits), "coder": coder}
        name += f"-compressed-p{codec['min_prob']:g}-b{codec['bits']}" + ("" if coder == "deflate" else f"-{coder}")
    folder = Path(cfg.cache_dir) / "llm_teacher_outputs" / name
    for turn in ("main", "others"):
        if (turn == "main") == is_main():
            # the teacher's forward on as many rows as a device trains on (the recipe's memory budget)
            method.cache = cls.load_or_build(folder, teacher, tok, examples, temperature=t, k=k,
                                             seq_len=cfg.data.seq_len, device=device,
                                             progress=bool(cfg.engine.progress and is_main()),
                                             batch_size=max(cfg.data.batch_size // world_size(), 1), **codec)
        barrier()
    c = method.cache
    log(f"teacher cache: {folder} ({c.meta['tokens']:,} tokens, k={k}, {kind}, {c.bytes_per_token():.1f} bytes/token)")
