"""Language-model data: examples from plain text, JSONL prompt/response or a HF `datasets` name,
rows (packed or one example each), and a loader whose batches carry the token normaliser.

An `Example` is a token list whose targets start at `start` (tokens before it are the prompt:
they are read but never predicted). `labels[t]` is the token after position t, -100 where it does
not count. Packing puts several examples in one row with `position_ids` restarting at 0 and a
block-diagonal causal attention mask (B, 1, T, T), additive so that eager attention honours it as
SDPA does, and the last token of an example never predicts
the first of the next: no attention and no loss cross a boundary, so a packed row gives the same
per-token losses as its examples run one by one.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from distill.errors import ConfigError

IGNORE = -100


@dataclass
class Example:
    ids: list[int]
    start: int = 1        # index of the first target token (>= 1)
    prompt_len: int = 1   # prompt given to generation-based methods (ids[:prompt_len])
    n_bytes: int = 0      # UTF-8 bytes of the target text (for bits per byte)
    sign: float = 1.0     # +1 a positive (correct) trace, -1 a negative one (used by `redi`)
    prompt: str | None = None    # prompt/response data: the raw texts, before any chat template, so that
    response: str | None = None  # another tokenizer can render its own (cross-tokenizer students)


# ------------------------------------------------------------------ sources

def _bytes_of(tok, ids: Sequence[int]) -> int:
    return len(tok.decode(list(ids), skip_special_tokens=True).encode("utf-8"))


def windows(body: Sequence[int], tok, seq_len: int, prompt_tokens: int, sign: float = 1.0) -> list[Example]:
    """Token ids cut into consecutive windows of `seq_len`, each starting with BOS (if the
    tokenizer has one); windows with no target token are dropped."""
    bos = tok.bos_token_id
    out = []
    step = seq_len - (1 if bos is not None else 0)
    for i in range(0, len(body), step):
        piece = list(body[i:i + step])
        ids = ([bos] if bos is not None else []) + piece
        if len(ids) < 2:
            continue
        out.append(Example(ids, start=1, prompt_len=min(prompt_tokens, len(ids) - 1),
                           n_bytes=_bytes_of(tok, piece), sign=sign))
    return out


def text_examples(texts: Sequence[str], tok, seq_len: int, prompt_tokens: int = 16) -> list[Example]:
    """One example per document (BOS + tokens + EOS); documents longer than `seq_len` are cut into
    consecutive windows, each starting with BOS."""
    out = []
    eos = tok.eos_token_id
    for text in texts:
        body = tok(text, add_special_tokens=False)["input_ids"]
        if eos is not None:
            body = body + [eos]
        out += windows(body, tok, seq_len, prompt_tokens)
    return out


def prompt_ids(tok, prompt: str) -> list[int]:
    """The tokens a model reads before its response: the tokenizer's chat template around one user
    message (with the generation prompt) when it has one, else BOS + the prompt."""
    if getattr(tok, "chat_template", None):
        p_text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
        return tok(p_text, add_special_tokens=False)["input_ids"]
    bos = tok.bos_token_id
    return ([bos] if bos is not None else []) + tok(prompt, add_special_tokens=False)["input_ids"]


def prompt_response_examples(pairs: Sequence[tuple], tok, seq_len: int) -> list[Example]:
    """(prompt, response[, positive]) tuples; the chat template is applied when the tokenizer has one.
    Targets are the response's tokens (and EOS) only."""
    out = []
    eos = tok.eos_token_id
    for prompt, response, *label in pairs:
        p_ids = prompt_ids(tok, prompt)
        r_ids = tok(response, add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
        ids = (p_ids + r_ids)[:seq_len]
        if len(p_ids) < 1 or len(ids) <= len(p_ids):
            continue
        out.append(Example(ids, start=len(p_ids), prompt_len=len(p_ids), n_bytes=_bytes_of(tok, ids[len(p_ids):]),
                           sign=1.0 if (not label or label[0]) else -1.0, prompt=prompt, response=response))
    return out


def read_texts(path: str | Path, separator: str = "\n\n") -> list[str]:
    """Documents of a .txt file (split on `separator`) or of every .txt file in a folder."""
    p = Path(path)
    files = sorted(p.glob("*.txt")) if p.is_dir() else [p]
    if not files or not all(f.is_file() for f in files):
        raise ConfigError(f"data.path: {str(path)!r} is not a text file or a folder of .txt files.")
    docs = []
    for f in files:
        docs += [d.strip() for d in f.read_text(encoding="utf-8").split(separator) if d.strip()]
    return docs


def read_jsonl(path: str | Path, prompt_field: str = "prompt", response_field: str = "response",
               label_field: str | None = None) -> list[tuple]:
    """(prompt, response) pairs, or (prompt, response, positive) with `label_field` (truthy = positive)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"data.path: {str(path)!r} is not a file.")
    pairs = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{p}:{n}: not valid JSON ({e}).") from None
        if prompt_field not in rec or response_field not in rec:
            raise ConfigError(f"{p}:{n}: expected keys {prompt_field!r} and {response_field!r}, got {sorted(rec)}.")
        pair = (str(rec[prompt_field]), str(rec[response_field]))
        if label_field is not None:
            if label_field not in rec:
                raise ConfigError(f"{p}:{n}: missing the label key {label_field!r}.")
            pair = (*pair, bool(rec[label_field]))
        pairs.append(pair)
    return pairs


def read_hf_dataset(name: str, split: str, text_field: str) -> list[str]:
    """Texts of a HF `datasets` data set (a hub name or a local path)."""
    try:
        import datasets
    except ImportError:
        raise ConfigError("data.source=hf needs the `datasets` package: pip install datasets") from None
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # offline hub, missing path, bad split
        raise ConfigError(f"data: could not load HF data set {name!r} (split {split!r}): {type(e).__name__}: {e}. "
                          "Without network access, give a local path or use data.source=text|jsonl.") from None
    if text_field not in ds.column_names:
        raise ConfigError(f"data.text_field: {text_field!r} is not a column of {name!r} ({ds.column_names}).")
    return [str(t) for t in ds[text_field]]


# ------------------------------------------------------------------ rows and batches

def pack(examples: Sequence[Example], seq_len: int) -> list[list[Example]]:
    """Greedy packing in order: consecutive examples share a row while they fit in `seq_len`."""
    rows: list[list[Example]] = []
    cur: list[Example] = []
    used = 0
    for ex in examples:
        n = min(len(ex.ids), seq_len)
        if cur and used + n > seq_len:
            rows.append(cur)
            cur, used = [], 0
        cur.append(ex)
        used += n
    if cur:
        rows.append(cur)
    return rows


def collate(rows: Sequence[Sequence[Example]], pad_id: int, *, packed: bool, with_prompts: bool = False
            ) -> dict[str, torch.Tensor]:
    """Tensors for a batch of rows (each a list of examples; one example per row when not packed).

    input_ids, labels, position_ids, seg (example number in its row, 0 = padding), sign (the
    example's sign at its target positions, else 0): (B, T);
    attention_mask: (B, 1, T, T) float32 additive block-diagonal causal mask when packed (0 where
    attention is allowed, the float32 minimum elsewhere), else (B, T) long;
    with_prompts: prompt_ids / prompt_mask (B, P), left-padded (one example per row only).
    """
    T = max(sum(len(e.ids) for e in r) for r in rows)
    B = len(rows)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), IGNORE, dtype=torch.long)
    pos = torch.zeros((B, T), dtype=torch.long)
    seg = torch.zeros((B, T), dtype=torch.long)
    sign = torch.zeros((B, T))
    n_bytes = 0
    for b, row in enumerate(rows):
        o = 0
        for j, ex in enumerate(row, 1):
            x = torch.tensor(ex.ids[:T - o])
            n = x.numel()
            ids[b, o:o + n] = x
            pos[b, o:o + n] = torch.arange(n)
            seg[b, o:o + n] = j
            s = max(ex.start, 1)
            if n > s:  # position t predicts token t+1 for t+1 in [start, n)
                labels[b, o + s - 1:o + n - 1] = x[s:]
                sign[b, o + s - 1:o + n - 1] = ex.sign
            n_bytes += ex.n_bytes
            o += n
    batch = {"input_ids": ids, "labels": labels, "position_ids": pos, "seg": seg, "sign": sign,
             "n_bytes": torch.tensor(n_bytes)}
    if packed:
        causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
        same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] > 0)
        allowed = ((same & causal) | torch.eye(T, dtype=torch.bool))[:, None]  # (B, 1, T, T)
        # additive (0 = attend, finfo.min = not), the form of a custom 4-D mask in transformers: eager
        # attention adds the mask to the scores (a bool mask would add 0/1 and leak across examples)
        # and SDPA / flex add it too; flash attention takes no 4-D mask (see `check_packing`)
        batch["attention_mask"] = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    else:
        batch["attention_mask"] = (seg > 0).long()
    if with_prompts:
        if any(len(r) != 1 for r in rows):
            raise ValueError("prompts need one example per row (packing off)")
        P = max(r[0].prompt_len for r in rows)
        pids = torch.full((B, P), pad_id, dtype=torch.long)
        pmask = torch.zeros((B, P), dtype=torch.long)
        for b, r in enumerate(rows):
            p = r[0].ids[:r[0].prompt_len]
            pids[b, P - len(p):] = torch.tensor(p)
            pmask[b, P - len(p):] = 1
        batch["prompt_ids"], batch["prompt_mask"] = pids, pmask
    return batch


PACKING_ATTENTION = ("eager", "sdpa", "flex_attention")  # the implementations that apply an additive 4-D mask


def _attn_impl(model) -> str | None:
    return getattr(getattr(model, "config", None), "_attn_implementation", None)


def packing_supported(*models) -> bool:
    """Whether every model applies the 4-D mask of packed rows (models without a config do)."""
    return all(_attn_impl(m) in (None, *PACKING_ATTENTION) for m in models if m is not None)


def check_packing(*models) -> None:
    """Refuse packed rows for a model whose attention implementation ignores a 4-D mask (flash
    attention and kernels): its examples would attend to each other."""
    from distill.errors import ConfigError

    for m in models:
        impl = _attn_impl(m)
        if impl is not None and impl not in PACKING_ATTENTION:
            raise ConfigError(f"data.pack: the {type(m).__name__} uses attn_implementation={impl!r}, which does not "
                              f"apply the block-diagonal mask of packed rows (allowed: {', '.join(PACKING_ATTENTION)}); "
                              "set data.pack=false or load the model with attn_implementation='sdpa'.")


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The keyword arguments a transformers causal LM takes from a batch."""
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
            "position_ids": batch["position_ids"]}


class LMLoader:
    """Batches of rows in a (seed, epoch)-determined order.

    Each batch carries `norm`: the number of counted target tokens in its gradient-accumulation
    window divided by the number of micro-batches in that window (`grad_accum`, or fewer for the
    epoch's short last window). A term summed over tokens and divided by `norm` (the engine then
    divides by the same window length) is the exact per-token mean over the window, whatever the
    padding and however tokens fall between micro-batches: the token weights of every window,
    the last included, sum to 1.

    With `world` > 1 processes, `batch_size` is the global batch: each process takes its slice of
    every batch (the uneven last batch is dropped), and `norm` counts the window's tokens over all
    processes, divided by `window * world` (DDP averages the processes' gradients), so the
    result is still the exact per-token mean over the global window.
    """

    def __init__(self, rows: Sequence[Sequence[Example]], batch_size: int, pad_id: int, *, packed: bool,
                 shuffle: bool = True, seed: int = 0, grad_accum: int = 1, with_prompts: bool = False,
                 rank: int = 0, world: int = 1):
        if batch_size % world:
            raise ValueError(f"data.batch_size {batch_size} must be divisible by the number of processes {world}")
        self.rows, self.batch_size, self.pad_id = list(rows), batch_size, pad_id
        self.packed, self.shuffle, self.seed, self.grad_accum = packed, shuffle, seed, grad_accum
        self.with_prompts = with_prompts
        self.rank, self.world = rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.world > 1:
            return len(self.rows) // self.batch_size
        return math.ceil(len(self.rows) / self.batch_size)

    def _order(self) -> list[int]:
        if not self.shuffle:
            return list(range(len(self.rows)))
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        return torch.randperm(len(self.rows), generator=g).tolist()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        order = self._order()
        groups = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)][:len(self)]
        per = self.batch_size // self.world
        for w in range(0, len(groups), self.grad_accum):
            window = groups[w:w + self.grad_accum]
            full = [collate([self.rows[i] for i in g], self.pad_id, packed=self.packed,
                            with_prompts=self.with_prompts) for g in window]
            tokens = sum(int((b["labels"] != IGNORE).sum()) for b in full)  # over every process
            for g, b in zip(window, full):
                if self.world > 1:
                    b = collate([self.rows[i] for i in g[self.rank * per:(self.rank + 1) * per]], self.pad_id,
                                packed=self.packed, with_prompts=self.with_prompts)
                # len(window), not grad_accum: the engine divides the last, short window by its length
                b["norm"] = torch.tensor(max(tokens, 1) / (len(window) * self.world))
                yield b


def rows_of(examples: Sequence[Example], seq_len: int, packed: bool) -> list[list[Example]]:
    return pack(examples, seq_len) if packed else [[e] for e in examples]
