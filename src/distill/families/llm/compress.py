"""A compressed sparse code for a teacher's next-token distributions (the llm cache's `compressed`
format).

Per token the code keeps the teacher's most probable tokens, at most `k` and only those with
probability at least `min_prob` and a non-zero code (the first always), and the exact probability
mass of everything else (the tail). Each kept probability is quantised in the square-root domain: code
c = round(sqrt(p) * (2^bits - 1)), at least 1. An error d in sqrt(p) costs about 2 d^2 of
KL(p || reconstruction), whatever p is, so one step size spends the bits where the divergence is
sensitive: fine steps in log p for probable tokens, coarse ones for rare tokens. On reading, the kept
probabilities are dequantised and rescaled to sum to 1 - tail, the tail being stored as its log in
fp32, so the mass outside the kept set, and the loss's tail bucket with it, stay exact.

Kept token ids are written in increasing order as gaps (the first as itself), with their codes in the
same order. One example's tokens are laid out column-wise (counts, tails, then each byte plane of the
gaps and of the codes) and deflated (zlib, raw stream): the byte planes of small numbers are mostly
zeros and the deflate coder's Huffman stage takes each plane close to its entropy, so no bit is
spent on a fixed index width. Decoding is `zlib.decompress` plus a few vectorised numpy operations.

`coder="lzma"` packs the same columns with LZMA2 (raw stream, no literal context bits) instead: its
adaptive range coder and repeat matches take 9-13% fewer bytes than deflate on the measured
caches, and a record takes 1.4-2.6x as long to decode (docs/benchmarks/llm_cache_codecs.md).
"""
from __future__ import annotations

import lzma
import math
import zlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

LOG_FLOOR = -1.0e4  # log of an empty tail
CODERS = ("deflate", "lzma")
_LZMA = [{"id": lzma.FILTER_LZMA2, "preset": 6, "lc": 0, "lp": 0, "pb": 0}]  # fixed: the reader uses the same


@dataclass(frozen=True)
class Codec:
    """The parameters of the code: at most `k` tokens per position, those with p >= `min_prob`,
    each quantised to `bits` bits in the sqrt domain; `vocab_size` fixes the width of the gaps;
    `coder` packs the columns (deflate, or lzma: smaller, slower to read)."""
    k: int
    vocab_size: int
    min_prob: float = 1e-4
    bits: int = 8
    coder: Literal["deflate", "lzma"] = "deflate"

    def __post_init__(self):
        if not 1 <= self.k <= 65535:
            raise ValueError(f"k must be in [1, 65535], got {self.k}")
        if not 2 <= self.bits <= 16:
            raise ValueError(f"bits must be in [2, 16], got {self.bits}")
        if not 0.0 <= self.min_prob < 1.0:
            raise ValueError(f"min_prob must be in [0, 1), got {self.min_prob}")
        if self.coder not in CODERS:
            raise ValueError(f"coder must be one of {', '.join(CODERS)}, got {self.coder!r}")

    @property
    def levels(self) -> int:
        return (1 << self.bits) - 1

    @property
    def gap_bytes(self) -> int:
        return max(1, math.ceil(math.log2(max(self.vocab_size, 2)) / 8))

    @property
    def code_bytes(self) -> int:
        return 1 if self.bits <= 8 else 2

    def meta(self) -> dict:
        return {"k": self.k, "vocab_size": self.vocab_size, "min_prob": self.min_prob, "bits": self.bits,
                "coder": self.coder}

    def pack(self, body: bytes) -> bytes:
        if self.coder == "lzma":
            return lzma.compress(body, format=lzma.FORMAT_RAW, filters=_LZMA)
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        return c.compress(body) + c.flush()

    def unpack(self, blob: bytes | memoryview) -> bytes:
        if self.coder == "lzma":
            return lzma.decompress(blob, format=lzma.FORMAT_RAW, filters=_LZMA)
        return zlib.decompress(blob, -15)


def _planes(a: np.ndarray, nbytes: int) -> bytes:
    """The little-endian byte planes of non-negative integers `a`: all low bytes, then the next..."""
    b = a.astype("<u4").view(np.uint8).reshape(-1, 4)[:, :nbytes]
    return np.ascontiguousarray(b.T).tobytes()


def _unplanes(buf: memoryview, n: int, nbytes: int) -> np.ndarray:
    b = np.frombuffer(buf, dtype=np.uint8, count=n * nbytes).reshape(nbytes, n)
    out = np.zeros((n, 4), dtype=np.uint8)
    out[:, :nbytes] = b.T
    return out.view("<u4").reshape(n).astype(np.int64)


def encode(codec: Codec, indices: Tensor, logprobs: Tensor, log_tail: Tensor) -> bytes:
    """One example's code from its top-k (n, k') indices and log-probs (any order, normalised over
    the full vocabulary) and exact log tail (n,) (the log of the mass outside those k')."""
    lp = logprobs.double()
    order = lp.argsort(dim=-1, descending=True)[:, :codec.k]
    lp = lp.gather(-1, order)
    idx = indices.long().gather(-1, order)
    p = lp.exp()
    code = (p.sqrt() * codec.levels).round()
    keep = (p >= codec.min_prob) & (code >= 1)  # a token whose code would be 0 joins the tail
    keep[:, 0] = True
    # the tail: the mass outside the top-k' plus the dropped top-k' tokens
    tail = log_tail.double().exp() + (p * ~keep).sum(-1) + \
        (logprobs.double().exp().sum(-1) - p.sum(-1)).clamp(min=0)  # ranks past codec.k
    log_tail_q = tail.clamp(min=1e-300).log().clamp(min=LOG_FLOOR).float()
    code = code.clamp(1, codec.levels).long()
    n_keep = keep.sum(-1)
    idx = idx.masked_fill(~keep, codec.vocab_size)  # dropped ids sort last
    idx_sorted, perm = idx.sort(dim=-1)
    code = code.gather(-1, perm)
    rows = torch.arange(idx.shape[1]).expand_as(idx) < n_keep.unsqueeze(-1)
    gaps = torch.diff(idx_sorted, dim=-1, prepend=torch.zeros_like(idx_sorted[:, :1]))
    gaps, code = gaps[rows].numpy(), code[rows].numpy()
    n = int(indices.shape[0])
    body = b"".join([_planes(n_keep.numpy(), 2), log_tail_q.numpy().astype("<f4").tobytes(),
                     _planes(gaps, codec.gap_bytes), _planes(code, codec.code_bytes)])
    return n.to_bytes(4, "little") + codec.pack(body)


def decode(codec: Codec, blob: bytes | memoryview) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(indices (n, k) long, log-probs (n, k) fp32, log tail (n,) fp32, valid (n, k) bool): the kept
    tokens of each position in increasing id order, padded with id 0 and log-prob LOG_FLOOR where
    `valid` is False (such bins hold no mass on either side of a divergence)."""
    blob = memoryview(blob)
    n = int.from_bytes(blob[:4], "little")
    body = memoryview(codec.unpack(blob[4:]))
    n_keep = _unplanes(body, n, 2)
    pos = 2 * n
    log_tail = np.frombuffer(body[pos:pos + 4 * n], dtype="<f4").astype(np.float32)
    pos += 4 * n
    total = int(n_keep.sum())
    gaps = _unplanes(body[pos:], total, codec.gap_bytes)
    pos += total * codec.gap_bytes
    code = _unplanes(body[pos:], total, codec.code_bytes)
    width = int(n_keep.max()) if n else 1
    starts = np.concatenate([[0], np.cumsum(n_keep)[:-1]])
    col = np.arange(total) - np.repeat(starts, n_keep)
    row = np.repeat(np.arange(n), n_keep)
    ids_flat = np.cumsum(gaps)
    ids_flat -= np.repeat(np.concatenate([[0], ids_flat[starts[1:] - 1]]) if n > 1 else np.zeros(1, np.int64),
                          n_keep)
    q = (code.astype(np.float64) / codec.levels) ** 2
    tail = np.exp(log_tail.astype(np.float64))
    mass = np.bincount(row, weights=q, minlength=n)
    scale = np.clip(1.0 - tail, 0.0, 1.0) / np.maximum(mass, 1e-300)
    lp_flat = np.log(np.maximum(q * scale[row], 1e-300))
    indices = np.zeros((n, width), dtype=np.int64)
    logprobs = np.full((n, width), LOG_FLOOR, dtype=np.float32)
    valid = np.zeros((n, width), dtype=bool)
    indices[row, col] = ids_flat
    logprobs[row, col] = np.maximum(lp_flat, LOG_FLOOR)
    valid[row, col] = True
    return (torch.from_numpy(indices), torch.from_numpy(logprobs), torch.from_numpy(log_tail).clamp(min=LOG_FLOOR),
            torch.from_numpy(valid))


def dense_logprobs(indices: Tensor, logprobs: Tensor, log_tail: Tensor, vocab_size: int,
                   valid: Tensor | None = None) -> Tensor:
    """The full (n, V) log-distribution a sparse record stands for: its bins, and the tail mass
    spread evenly over the tokens outside them (float64). The reference for measuring a code."""
    n = indices.shape[0]
    valid = torch.ones_like(indices, dtype=torch.bool) if valid is None else valid
    p_bins = logprobs.double().exp() * valid
    out = torch.zeros(n, vocab_size, dtype=torch.float64)
    out.scatter_add_(1, indices.long(), p_bins)
    inside = torch.zeros(n, vocab_size, dtype=torch.int64)
    inside = inside.scatter_add_(1, indices.long(), valid.long()) > 0  # padded bins may repeat a kept id
    rest = (vocab_size - inside.sum(-1)).clamp(min=1)
    tail = log_tail.double().exp().clamp(min=0)
    out = torch.where(inside, out, (tail / rest).unsqueeze(-1).expand(n, vocab_size))
    return out.clamp(min=1e-300).log()


def kl_per_token(lp_full: Tensor, lp_rec: Tensor) -> Tensor:
    """KL(p_full || p_rec) per row, float64."""
    lp_full = lp_full.double()
    return (lp_full.exp() * (lp_full - lp_rec.double())).sum(-1)
