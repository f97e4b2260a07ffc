"""The aligned teacher cache: what `alm` reads instead of running the teacher, for a student whose
tokenizer is not the teacher's.

ALM compares, per aligned chunk of text, the teacher's log-likelihood of the chunk (the sum of the
log-probs of the teacher's own tokens in it) with the student's. The cache holds, for each text of
the training set as the teacher tokenises it (the teacher example `CrossTokenizerMethod.pair`
builds from a student example: the teacher's BOS or prompt template, the text, EOS), the teacher's
log-prob of each of its tokens given those before (fp32, 4 bytes per teacher token; exact, at
temperature 1, which is what ALM's tau divides). The chunks are formed while training, from the
alignment with the student's tokens, so the cache holds nothing of the student's tokenizer: it is
keyed by a digest of the teacher's ids of each text, and a student with another tokenizer whose
examples are the same texts reads the same cache. The student's side is computed from its final
hidden states, `chunk_size` positions' logits at a time, so neither model's full logits exist.

Files: `aligned.safetensors` (log-probs, per-example offsets and keys) and `meta.json` (teacher
fingerprint, teacher tokenizer hash, the hash of the teacher examples' keys, sha256 of the tensor
file); a cache whose metadata differs from the run's is refused (`CacheMismatchError`).

`uld` reads the aligned top-k cache (`AlignedTopKCache`) instead: for every position of each
teacher example, the teacher's k largest next-token log-probs at the method's temperature (fp16,
sorted; ULD compares sorted distributions, so the token ids are not kept) and the exact log of the
remaining mass (fp32): 2k + 4 bytes per teacher token, keyed as above, so it too serves students of
any tokenizer. ULD then reads it at each chunk's first teacher position (see `uld.topk_sorted_wasserstein`).
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from distill.errors import CacheMismatchError
from distill.families.llm.cache import example_key, keys_hash, record_index, rows_of_keys, tokenizer_hash
from distill.families.llm.data import Example, collate
from distill.losses.lm import hidden_token_logprobs
from distill.teacher import CheckedCache, Teacher, write_checked

ALIGNED_CACHE_FORMAT = 1


def _paired_batches(method, examples: Sequence[Example], batch_size: int, device) -> Iterator[Any]:
    """`method.pair` of the student examples, one per row (unpacked), `batch_size` rows at a time."""
    pad = method.s_tok.pad_token_id if method.s_tok.pad_token_id is not None else 0
    for i in range(0, len(examples), batch_size):
        rows = [[e] for e in examples[i:i + batch_size] if e.has_targets()]
        if rows:
            batch = {k: v.to(device) for k, v in collate(rows, pad, packed=False).items()}
            yield method.pair(batch)


def teacher_keys(method, examples: Sequence[Example], batch_size: int = 64) -> list[bytes]:
    """The distinct keys of the teacher examples of `examples` (no teacher needed: tokenisation and
    alignment only)."""
    seen: dict[bytes, None] = {}
    for p in _paired_batches(method, examples, batch_size, "cpu"):
        for _, ids, start in p.t_examples:
            seen.setdefault(example_key(ids, start), None)
    return list(seen)


@torch.no_grad()
def _teacher_pass(method, examples: Sequence[Example], keys: Sequence[bytes], rows, empty: tuple[Tensor, ...], *,
                  what: str, batch_size: int, device, progress: bool) -> tuple[list[bytes], list[int], list[Tensor]]:
    """Run the teacher once over every distinct teacher example of `examples` (one per row, a
    progress bar with `progress`): `rows(hidden (n, D), next tokens (n,))` -> a tuple of (n, ...)
    tensors at every position of those examples. Returns (the keys found, in the order of `keys`;
    their row counts; each output concatenated over them in that order, or `empty`'s)."""
    from distill.utils import ProgressBar

    done: dict[bytes, tuple[Tensor, ...]] = {}
    with ProgressBar(progress, what, len(keys)) as bar:
        for p in _paired_batches(method, examples, batch_size, device):
            todo = [(flat, ids, example_key(ids, start)) for flat, ids, start in p.t_examples]
            todo = [t for t in todo if t[2] not in done and len(t[1]) > 1]
            if todo:
                h = method.teacher_hidden(p.teacher_batch)
                h = h.reshape(-1, h.shape[-1])
                pos = torch.cat([torch.arange(flat, flat + len(ids) - 1) for flat, ids, _ in todo]).to(h.device)
                tok = torch.tensor([t for _, ids, _ in todo for t in ids[1:]], dtype=torch.long, device=h.device)
                out = rows(h[pos], tok)
                o = 0
                for _, ids, key in todo:
                    done[key] = tuple(x[o:o + len(ids) - 1] for x in out)
                    o += len(ids) - 1
            bar.update(len(done))
    order = [key for key in keys if key in done]
    counts = [done[key][0].shape[0] for key in order]
    cols = [torch.cat([done[key][j] for key in order]) if order else e for j, e in enumerate(empty)]
    return order, counts, cols


class _AlignedCache(CheckedCache):
    """What both aligned caches share: rows per teacher example (`record_index`), written with
    their metadata."""

    @classmethod
    def _write(cls, folder, method, keys: Sequence[bytes], order: list[bytes], counts: list[int],
               tensors: dict[str, Tensor], **spec):
        meta = cls.expected_meta(method.teacher, method.t_tok, keys, **spec)
        meta.update(tokens=int(sum(counts)), examples=len(order))
        tensors = {**tensors, **record_index(order, counts)}
        meta = write_checked(Path(folder), cls.FILE, cls.META, tensors, meta)
        return cls(Path(folder), meta, tensors)

    def bytes_per_token(self) -> float:
        return self.size_bytes() / max(int(self.meta["tokens"]), 1)


class AlignedTeacherCache(_AlignedCache):
    FILE, WHAT = "aligned.safetensors", "aligned teacher cache"

    def __init__(self, folder: Path, meta: dict[str, Any], tensors: dict[str, Tensor]):
        self.folder, self.meta = folder, meta
        self.logprobs = tensors["logprobs"]    # (N,) fp32: log p(token j + 1 | tokens <= j) of each teacher example
        self._where = rows_of_keys(tensors)    # teacher example key -> its rows (`record_index`)

    @classmethod
    def expected_meta(cls, teacher: Teacher, t_tok, keys: Sequence[bytes]) -> dict[str, Any]:
        return {"format": ALIGNED_CACHE_FORMAT, "kind": "aligned_token_logprobs", "teacher": teacher.fingerprint(),
                "tokenizer": tokenizer_hash(t_tok), "data": keys_hash(keys)}

    @classmethod
    def build(cls, folder: str | os.PathLike, method, examples: Sequence[Example], keys: Sequence[bytes], *,
              batch_size: int, device, progress: bool = False) -> AlignedTeacherCache:
        """Run the teacher once over every distinct teacher example of `examples` (one per row) and
        write the log-prob of each of its tokens (a progress bar with `progress`)."""
        w, b, f = method.teacher_head()

        def rows(h, tok):
            return (hidden_token_logprobs(h, w, tok.to(w.device), bias=b, vocab=method.t_vocab,
                                          chunk_size=method.chunk_size, logit_map=f).float().cpu(),)

        order, counts, (lp,) = _teacher_pass(method, examples, keys, rows, (torch.zeros(0),), what=cls.WHAT,
                                             batch_size=batch_size, device=device, progress=progress)
        return cls._write(folder, method, keys, order, counts, {"logprobs": lp})

    def chunk_logprobs(self, p, n: int) -> Tensor:
        """The teacher's log-likelihood of each of the `n` chunks of a paired batch `p` (what ALM
        computes from the teacher's forward), from the cache."""
        return fill_chunks(p, n, [self.logprobs[a:z] for a, z in example_rows(self, p)])


def example_rows(cache, p) -> list[tuple[int, int]]:
    """The (first, end) rows of `cache` (an aligned cache) of each teacher example of paired batch
    `p`, in order; a text the cache does not hold is refused."""
    out = []
    for _, ids, start in p.t_examples:
        where = cache._where.get(example_key(ids, start))
        if where is None or where[1] - where[0] != len(ids) - 1:
            raise CacheMismatchError(f"{cache.WHAT} {cache.folder}: a text of this batch is not in the cache (the "
                                     "data or the teacher's tokenisation changed since it was built); delete the "
                                     "folder.")
        out.append(where)
    return out


def fill_chunks(p, n: int, per_example) -> Tensor:
    """Chunk log-likelihoods (n,) of paired batch `p` from `per_example`: one (len(ids) - 1,) tensor
    of next-token log-probs per teacher example of `p.t_examples`, in order."""
    Bt, Tt = p.teacher_batch["input_ids"].shape
    flat = torch.zeros(Bt * Tt)
    for (start_flat, ids, _), lp in zip(p.t_examples, per_example):
        flat[start_flat:start_flat + len(ids) - 1] = lp
    dev = p.t_pos.device
    return torch.zeros(n, device=dev).index_add(0, p.t_chunk, flat.to(dev)[p.t_pos])


class AlignedTopKCache(_AlignedCache):
    """What `uld` reads instead of running the teacher (see the module docstring)."""
    FILE, WHAT = "aligned_topk.safetensors", "aligned top-k teacher cache"

    def __init__(self, folder: Path, meta: dict[str, Any], tensors: dict[str, Tensor]):
        self.folder, self.meta = folder, meta
        self.logprobs = tensors["logprobs"]    # (N, k) fp16, sorted decreasingly, at the cache temperature
        self.log_tail = tensors["log_tail"]    # (N,) fp32: log of the mass outside the top-k
        self._where = rows_of_keys(tensors)

    @classmethod
    def expected_meta(cls, teacher: Teacher, t_tok, keys: Sequence[bytes], *, k: int, temperature: float
                      ) -> dict[str, Any]:
        return {"format": ALIGNED_CACHE_FORMAT, "kind": "aligned_topk", "teacher": teacher.fingerprint(),
                "tokenizer": tokenizer_hash(t_tok), "data": keys_hash(keys), "k": int(k),
                "temperature": float(temperature)}

    @classmethod
    def build(cls, folder: str | os.PathLike, method, examples: Sequence[Example], keys: Sequence[bytes], *,
              k: int, temperature: float, batch_size: int, device, progress: bool = False) -> AlignedTopKCache:
        """Run the teacher once over every distinct teacher example of `examples` (one per row) and
        write its top-k and log tail at every position (a progress bar with `progress`)."""
        from distill.losses.lm import head_topk

        w, b, f = method.teacher_head()

        def rows(h, tok):
            _, lp, tail = head_topk(h.to(w.device), w, b, f, k=k, temperature=temperature,
                                    chunk_size=method.chunk_size, tail_floor=-1.0e4, vocab=method.t_vocab)
            return lp.half().cpu(), tail.float().cpu()

        empty = (torch.zeros(0, min(k, method.t_vocab)).half(), torch.zeros(0))
        order, counts, (lp, tail) = _teacher_pass(method, examples, keys, rows, empty, what=cls.WHAT,
                                                  batch_size=batch_size, device=device, progress=progress)
        return cls._write(folder, method, keys, order, counts, {"logprobs": lp, "log_tail": tail}, k=k,
                          temperature=temperature)

    def first_topk(self, p, keep: Tensor, k: int | None = None, temperature: float | None = None
                   ) -> tuple[Tensor, Tensor]:
        """(top-k log-probs (n, k), log tail (n,)) of the teacher at the first teacher position of
        each chunk `keep` of paired batch `p` (what ULD compares), from the cache."""
        if temperature is not None and float(temperature) != float(self.meta["temperature"]):
            raise CacheMismatchError(f"{self.WHAT} {self.folder}: written at temperature {self.meta['temperature']}, "
                                     f"read at {temperature}; delete the folder.")
        return first_positions(p, keep, [(self.logprobs[a:z].float(), self.log_tail[a:z])
                                         for a, z in example_rows(self, p)])


def first_positions(p, keep: Tensor, per_example) -> tuple[Tensor, Tensor]:
    """Rows of `per_example` ((len(ids) - 1, k) top-k log-probs, (len(ids) - 1,) log tails, one pair per
    teacher example of `p.t_examples`, in order) at the first teacher position of chunks `keep`."""
    Bt, Tt = p.teacher_batch["input_ids"].shape
    dev = p.t_first.device
    k = per_example[0][0].shape[-1] if per_example else 1
    top = torch.zeros(Bt * Tt, k)
    tail = torch.zeros(Bt * Tt)
    filled = torch.zeros(Bt * Tt, dtype=torch.bool)
    for (start_flat, ids, _), (lp, lt) in zip(p.t_examples, per_example):
        n = len(ids) - 1
        top[start_flat:start_flat + n], tail[start_flat:start_flat + n] = lp, lt
        filled[start_flat:start_flat + n] = True
    at = p.t_first[keep].cpu()
    if not bool(filled[at].all()):
        raise RuntimeError("a chunk's first teacher position is outside its teacher example")
    return top[at].to(dev), tail[at].to(dev)


class ServedAligned:
    """What `alm` reads from a served teacher (`teacher.url`): the next tokens' log-probs of each
    teacher example of a batch, asked of `distill serve-teacher` (POST /v1/topk with
    token_logprobs), one example per row; `chunk_logprobs` as `AlignedTeacherCache`'s; and what
    `uld` reads, the top-k and log tail at each chunk's first teacher position (`first_topk`, as
    `AlignedTopKCache`'s, `top_k` of them at the method's temperature). With `vocab`
    (the teacher tokenizer's length) below the served vocabulary, the server normalises over that
    many rows, as the in-process alm does for a head padded past its tokenizer."""

    def __init__(self, url: str, remote=None, timeout: float = 120.0, pad_id: int = 0, vocab: int | None = None,
                 top_k: int = 32):
        from distill.serve import RemoteTeacher

        self.remote = remote if remote is not None else RemoteTeacher(url, timeout=timeout)
        self.pad_id, self.top_k = pad_id, int(top_k)
        served = int(self.remote.info.get("vocab_size") or 0)
        self.vocab = int(vocab) if vocab and served and int(vocab) < served else None
        self.meta = {"fingerprint": self.remote.fingerprint()}

    def chunk_logprobs(self, p, n: int) -> Tensor:
        from distill.families.llm.served import padded_rows

        exs = [ids for _, ids, _ in p.t_examples]
        if not exs:
            return torch.zeros(n, device=p.t_pos.device)
        rows, mask = padded_rows(exs, self.pad_id)
        _, _, tok = self.remote.topk(rows, mask, k=1, with_tail=True, with_tokens=True, vocab=self.vocab)
        return fill_chunks(p, n, [tok[r, :len(ids) - 1] for r, ids in enumerate(exs)])

    def first_topk(self, p, keep: Tensor, k: int | None = None, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
        from distill.families.llm.served import padded_rows

        exs = [ids for _, ids, _ in p.t_examples]
        if not exs or keep.numel() == 0:
            kk = k or self.top_k
            return torch.zeros(keep.numel(), kk, device=p.t_first.device), torch.zeros(keep.numel(), device=p.t_first.device)
        rows, mask = padded_rows(exs, self.pad_id)
        top, tail = self.remote.topk(rows, mask, k=k or self.top_k, temperature=temperature, with_tail=True,
                                     vocab=self.vocab)
        return first_positions(p, keep, [(top.logprobs[r, :len(ids) - 1], tail[r, :len(ids) - 1])
                                         for r, ids in enumerate(exs)])


def attach_aligned_cache(method, cfg, teacher: Teacher, examples: Sequence[Example], device, log) -> None:
    """Give `method` (one with `reads_aligned_cache`) its aligned cache of `examples` (the top-k one
    for `aligned_cache_kind = "topk"`, at its temperature and teacher.cache_top_k), built on the main
    process first; the others then read it."""
    from distill.dist import barrier, is_main, world_size

    method.accept_aligned_cache()
    keys = teacher_keys(method, examples)
    name = f"{teacher.fingerprint()}-{keys_hash(keys)}-aligned"
    cls: type[_AlignedCache] = AlignedTeacherCache
    spec: dict[str, Any] = {}
    if getattr(method, "aligned_cache_kind", "token_logprobs") == "topk":
        cls, spec = AlignedTopKCache, {"k": int(cfg.teacher.cache_top_k), "temperature": float(method.temperature)}
        name += f"-topk-T{spec['temperature']}-k{spec['k']}"
    folder = Path(cfg.cache_dir) / "llm_teacher_outputs" / name
    kw = dict(batch_size=max(cfg.data.batch_size // world_size(), 1), device=device,
              progress=bool(cfg.engine.progress and is_main()))
    for turn in ("main", "others"):
        if (turn == "main") == is_main():
            method.cache = cls.open_or_build(
                folder, lambda: cls.expected_meta(teacher, method.t_tok, keys, **spec),
                lambda: cls.build(folder, method, examples, keys, **spec, **kw))
        barrier()
    c = method.cache
    k_note = f", k={spec['k']}" if spec else ""
    log(f"{cls.WHAT}: {folder} ({c.meta['tokens']:,} teacher tokens{k_note}, {c.bytes_per_token():.1f} bytes/token)")
