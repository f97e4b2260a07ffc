"""Byte-offset alignment of two tokenisations of the same text.

Every token is given the bytes it contributes to the text (`token_bytes_table`): SentencePiece
pieces with the leading-space marker U+2581 become a space, byte-fallback pieces `<0xNN>` one byte,
GPT-2-style byte-level pieces are mapped back through the byte <-> unicode table, and special
tokens (BOS, EOS, pad, chat-template markers) contribute no bytes. A tokenisation is then a list of
byte spans in the shared text; a leading space that SentencePiece adds on its own (the "dummy
prefix") is detected and dropped, and a tokenizer whose tokens do not spell the text byte for byte
(a normaliser that rewrites text, no usable vocabulary) is refused with `AlignmentError`.

Chunks end where both sides have a token boundary, so a chunk is the same byte string on both
sides and its likelihood is comparable (Minixhofer et al. 2025, ALM, sec. 3). Working in bytes
makes a multi-byte UTF-8 character split across tokens on one side (or on both, at different
bytes) a non-issue: such a boundary is simply not shared. Zero-byte tokens (BOS/EOS on one side
only, template markers) belong to no chunk; a final EOS present on both sides forms its own chunk.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Sequence

_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_SP_SPACE = "\u2581"


class AlignmentError(ValueError):
    """Two tokenisations that cannot be aligned byte for byte."""


@lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    """Inverse of the GPT-2 byte-level alphabet (each byte shown as one printable character)."""
    from tokenizers import pre_tokenizers

    # ByteLevel.alphabet() lists the 256 characters; rebuild the standard byte -> char order.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, n = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + n)
            n += 1
    assert set(chars.values()) == set(pre_tokenizers.ByteLevel.alphabet())
    return {c: b for b, c in chars.items()}


def is_byte_level(tok) -> bool:
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        return False
    s = backend.to_str()
    return '"ByteLevel"' in s and _SP_SPACE not in s


def token_bytes_table(tok) -> list[bytes]:
    """The bytes each vocabulary id contributes to the text (b"" for special tokens). (V,) list."""
    special = set(tok.all_special_ids)
    special |= {i for i, t in getattr(tok, "added_tokens_decoder", {}).items() if getattr(t, "special", False)}
    n = max(len(tok), max(special, default=-1) + 1)
    pieces = tok.convert_ids_to_tokens(list(range(n)))
    u2b = _unicode_to_byte() if is_byte_level(tok) else None
    table = []
    for i, p in enumerate(pieces):
        if i in special or p is None:
            table.append(b"")
            continue
        m = _BYTE_PIECE.match(p)
        if m:
            table.append(bytes([int(m.group(1), 16)]))
        elif u2b is not None and all(c in u2b for c in p):
            table.append(bytes(u2b[c] for c in p))
        else:
            table.append(p.replace(_SP_SPACE, " ").encode("utf-8"))
    return table


@dataclass
class Encoded:
    """One side's tokens over a shared text: ids and byte spans [start, end) in that text."""
    ids: list[int]
    spans: list[tuple[int, int]]
    final_eos: bool = False  # ends with a zero-byte EOS (paired with the other side's, if any)


def spans_of(ids: Sequence[int], table: Sequence[bytes], text: bytes, *, start: int = 0,
             what: str = "tokenizer") -> list[tuple[int, int]]:
    """Byte spans of `ids` spelling `text` (placed at offset `start`); drops a dummy-prefix space."""
    pieces = [table[i] if i < len(table) else b"" for i in ids]
    joined = b"".join(pieces)
    skip = 0
    if joined != text:
        if joined == b" " + text:
            skip = 1
        else:
            raise AlignmentError(f"{what}: its tokens spell {joined[:60]!r}..., not the text {text[:60]!r}... "
                                 "(a normaliser rewrites the text, or the vocabulary has no byte meaning); "
                                 "it cannot be aligned by bytes.")
    spans, o = [], 0
    for p in pieces:
        a, b = max(o - skip, 0), max(o + len(p) - skip, 0)
        spans.append((start + a, start + b))
        o += len(p)
    return spans


def encode(tok, text: str, table: Sequence[bytes] | None = None, *, bos: bool = True, eos: bool = False,
           what: str = "tokenizer") -> Encoded:
    """Tokenise `text` (no automatic specials) and add BOS/EOS as zero-byte tokens."""
    return encode_segments(tok, [(text, True)], table, bos=bos, eos=eos, what=what)


def encode_segments(tok, segments: Sequence[tuple[str, bool]], table: Sequence[bytes] | None = None, *,
                    bos: bool = False, eos: bool = False, what: str = "tokenizer") -> Encoded:
    """Tokenise (text, shared) segments one by one. Shared segments are the text both sides see
    (their concatenation is the aligned text); the others (chat-template scaffolding, a system
    prompt one side lacks) are context only: zero-byte tokens at the current offset."""
    table = token_bytes_table(tok) if table is None else table
    ids: list[int] = []
    spans: list[tuple[int, int]] = []
    if bos and tok.bos_token_id is not None:
        ids.append(tok.bos_token_id)
        spans.append((0, 0))
    o = 0
    for text, shared in segments:
        if not text:
            continue
        seg = tok(text, add_special_tokens=False, split_special_tokens=shared)["input_ids"]
        if shared:
            raw = text.encode("utf-8")
            spans += spans_of(seg, table, raw, start=o, what=what)
            o += len(raw)
        else:
            spans += [(o, o)] * len(seg)
        ids += seg
    final = bool(eos and tok.eos_token_id is not None)
    if final:
        ids.append(tok.eos_token_id)
        spans.append((o, o))
    return Encoded(ids, spans, final)


def chat_segments(tok, messages: Sequence[dict], *, add_generation_prompt: bool = False) -> list[tuple[str, bool]]:
    """(text, shared) segments of a chat: message contents are shared, the template around them is
    not (each side renders its own template). Without a template the contents are joined by "\\n"."""
    if not getattr(tok, "chat_template", None):
        segs: list[tuple[str, bool]] = []
        for i, m in enumerate(messages):
            segs += ([("\n", True)] if i else []) + [(m["content"], True)]
        return segs
    marks = [f"\ue000{i}\ue001" for i in range(len(messages))]
    rendered = tok.apply_chat_template([{**m, "content": k} for m, k in zip(messages, marks)], tokenize=False,
                                       add_generation_prompt=add_generation_prompt)
    segs, rest = [], rendered
    for m, k in zip(messages, marks):
        before, sep, rest = rest.partition(k)
        if not sep:
            raise AlignmentError("chat template: a message's content does not appear verbatim in the rendering.")
        segs += [(before, False), (m["content"], True)]
    segs.append((rest, False))
    return [s for s in segs if s[0]]


@dataclass
class Alignment:
    """Chunks of two aligned tokenisations. `a_chunk[i]` / `b_chunk[j]`: the chunk of each token
    (-1: none, a zero-byte token); `bounds[k]`: chunk k's byte range [lo, hi) (lo == hi: the EOS chunk)."""
    a_chunk: list[int]
    b_chunk: list[int]
    bounds: list[tuple[int, int]] = field(default_factory=list)

    @property
    def n_chunks(self) -> int:
        return len(self.bounds)


def align(a: Encoded, b: Encoded) -> Alignment:
    """Chunks ending at the byte offsets where both sides end a token (see the module docstring)."""
    ends_a = {e for s, e in a.spans if e > s}
    ends_b = {e for s, e in b.spans if e > s}
    total_a = max((e for _, e in a.spans), default=0)
    total_b = max((e for _, e in b.spans), default=0)
    if total_a != total_b:
        raise AlignmentError(f"the two sides cover {total_a} and {total_b} bytes of text")
    cuts = sorted(ends_a & ends_b)
    if total_a and (not cuts or cuts[-1] != total_a):
        raise AlignmentError("the two tokenisations do not both end at the end of the text")
    bounds = list(zip([0] + cuts[:-1], cuts))

    def assign(enc: Encoded) -> list[int]:
        out, k = [], 0
        for s, e in enc.spans:
            if e <= s:
                out.append(-1)
                continue
            while cuts[k] < e:
                k += 1
            out.append(k)
        return out

    ca, cb = assign(a), assign(b)
    if a.final_eos and b.final_eos:  # both predict the end of the text: a chunk of its own
        bounds.append((total_a, total_a))
        ca[-1] = cb[-1] = len(bounds) - 1
    return Alignment(ca, cb, bounds)
