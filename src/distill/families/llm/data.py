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

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from distill.data.jsonl import jsonl_rows, parse_line
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
    mask: list[bool] | None = None  # chat data: which tokens are targets (ids[t] with mask[t], t >= 1);
    # None: every token from `start` on
    messages: list[dict] | None = None  # chat data: the conversation, before any chat template, and
    loss_on: str = "assistant"          # which of its tokens are targets (data.loss_on)

    def target_positions(self) -> list[int] | None:
        """Label positions (t - 1 for each target token t) when the targets are not the one run from
        `start` to the end, else None."""
        if self.mask is None:
            return None
        pos = [t - 1 for t in range(1, len(self.ids)) if self.mask[t]]
        return None if pos == list(range(max(self.start, 1) - 1, len(self.ids) - 1)) else pos

    def has_targets(self) -> bool:
        return any(self.mask[1:]) if self.mask is not None else len(self.ids) > max(self.start, 1)


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


def pair_of(rec: dict, where: str, prompt_field: str = "prompt", response_field: str = "response",
            label_field: str | None = None) -> tuple:
    """(prompt, response) of one JSONL record, or (prompt, response, positive) with `label_field`."""
    if prompt_field not in rec or response_field not in rec:
        raise ConfigError(f"{where}: expected keys {prompt_field!r} and {response_field!r}, got {sorted(rec)}; "
                          "name yours with data.prompt_field / data.response_field.")
    pair = (str(rec[prompt_field]), str(rec[response_field]))
    if label_field is not None:
        if label_field not in rec:
            raise ConfigError(f"{where}: missing the label key {label_field!r}.")
        pair = (*pair, bool(rec[label_field]))
    return pair


def read_jsonl(path: str | Path, prompt_field: str = "prompt", response_field: str = "response",
               label_field: str | None = None) -> list[tuple]:
    """(prompt, response) pairs, or (prompt, response, positive) with `label_field` (truthy = positive)."""
    return [pair_of(rec, f"{path}:{n}", prompt_field, response_field, label_field) for n, rec in jsonl_rows(path)]


def _load_hf(name: str, split: str):
    try:
        import datasets
    except ImportError:
        raise ConfigError("data.source=hf needs the `datasets` package: pip install datasets") from None
    try:
        return datasets.load_dataset(name, split=split)
    except Exception as e:  # offline hub, missing path, bad split
        raise ConfigError(f"data: could not load HF data set {name!r} (split {split!r}): {type(e).__name__}: {e}. "
                          "Without network access, give a local path or use data.source=text|jsonl.") from None


def read_hf_dataset(name: str, split: str, text_field: str) -> list[str]:
    """Texts of a HF `datasets` data set (a hub name or a local path)."""
    ds = _load_hf(name, split)
    if text_field not in ds.column_names:
        raise ConfigError(f"data.text_field: {text_field!r} is not a column of {name!r} ({ds.column_names}).")
    return [str(t) for t in ds[text_field]]


# ------------------------------------------------------------------ chat data

CHAT_ROLES = ("system", "user", "assistant", "tool")


def check_messages(messages: Any, where: str) -> list[dict]:
    """A conversation as a list of {"role", "content"} objects with at least one assistant turn."""
    if not isinstance(messages, list) or not messages:
        raise ConfigError(f"{where}: a conversation is a non-empty list of {{\"role\": ..., \"content\": ...}} "
                          f"objects, got {type(messages).__name__}.")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
            raise ConfigError(f"{where}: message {i} is {str(m)[:60]!r}; each message needs \"role\" and \"content\".")
        if m["role"] not in CHAT_ROLES:
            raise ConfigError(f"{where}: message {i} has role {m['role']!r}; roles are {', '.join(CHAT_ROLES)}.")
        out.append({**m, "content": "" if m["content"] is None else m["content"]})
    if not any(m["role"] == "assistant" for m in out):
        raise ConfigError(f"{where}: the conversation has no assistant message, so nothing to learn from; "
                          "drop it or add the reply.")
    return out


def read_chats(path: str | Path, field: str = "messages") -> list[list[dict]]:
    """Conversations of a JSONL file, one object per line with a list of messages under `field`."""
    return [messages_of(rec, f"{path}:{n}", field) for n, rec in jsonl_rows(path)]


def messages_of(rec: dict, where: str, field: str = "messages") -> list[dict]:
    if field not in rec:
        raise ConfigError(f"{where}: no {field!r} key (keys: {sorted(rec)}); name the messages' key with "
                          "data.messages_field.")
    return check_messages(rec[field], where)


def read_hf_chats(name: str, split: str, field: str) -> list[list[dict]]:
    """Conversations of a HF `datasets` data set whose `field` column holds message lists."""
    ds = _load_hf(name, split)
    if field not in ds.column_names:
        raise ConfigError(f"data.messages_field: {field!r} is not a column of {name!r} ({ds.column_names}).")
    return [check_messages(m, f"{name} row {i}") for i, m in enumerate(ds[field])]


def set_chat_template(tok, template: str | None, where: str = "data.chat_template") -> None:
    """Give `tok` the recipe's chat template (Jinja text, or a file holding it); refuse chat data for a
    tokenizer that has none."""
    if template:
        p = Path(template).expanduser()
        tok.chat_template = p.read_text(encoding="utf-8") if "{" not in template and p.is_file() else template
    if not getattr(tok, "chat_template", None):
        fix = ("give data.chat_template (Jinja text or a file) or use a chat model's tokenizer"
               if where == "data.chat_template" else "give the student a tokenizer that has a chat template")
        raise ConfigError(f"{where}: data.source=chat renders conversations with the tokenizer's chat template, and "
                          f"this tokenizer ({type(tok).__name__}) has none; {fix}.")


def _render(tok, messages: list[dict], generation_prompt: bool) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def chat_pieces(tok, messages: list[dict]) -> list[tuple[str, int]] | None:
    """The conversation's rendered text cut at the turn boundaries: (text, i) pieces, i the index of
    the assistant message whose reply (content and end-of-turn markup) the piece is, -1 for text
    around the replies (system/user turns, each reply's header). None when the template is not
    prefix-stable (rendering more turns rewrites earlier text, as templates that drop earlier
    reasoning do)."""
    pieces: list[tuple[str, int]] = []
    done = ""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    for i, m in enumerate(messages[:last + 1]):
        if m["role"] != "assistant":
            continue
        try:
            head = _render(tok, messages[:i], True) if i else ""
        except Exception:  # templates that need a first message
            head = ""
        full = _render(tok, messages[:i + 1], False)
        if not head.startswith(done) or not full.startswith(head):
            return None
        pieces += [(head[len(done):], -1), (full[len(head):], i)]
        done = full
    return [(t, i) for t, i in pieces if t]


def chat_examples(convs: Sequence[list[dict]], tok, seq_len: int, loss_on: str = "assistant") -> list[Example]:
    """Examples of conversations rendered with the tokenizer's chat template. Targets (`loss_on`):
    every assistant reply ("assistant", the default), the last reply only ("last"), or every token
    ("all"). A reply's targets are its content and the template's end-of-turn markup, so the student
    learns to stop; the headers a template writes before a reply are read, never predicted. A fast
    tokenizer tokenizes the rendered text whole (the ids apply_chat_template gives) and a token
    counts with the piece of its last character; a slow one tokenizes piece by piece. A template that is not
    prefix-stable gives one example per reply, its history rendered as the prompt (where even the
    generation prompt is not how the template writes the reply, the reply's own rendering is split
    at its content, so the end-of-turn markup stays a target). Conversations
    cut by `seq_len` keep the replies that fit; one with no target left is dropped."""
    out = []
    for msgs in convs:
        pieces = chat_pieces(tok, msgs)
        if pieces is None:  # one example per reply, its history as the prompt
            replies = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
            for i in (replies[-1:] if loss_on == "last" else replies):
                head = _render(tok, msgs[:i], True) if i else ""
                full = _render(tok, msgs[:i + 1], False)
                if not full.startswith(head):  # the generation prompt is not how the template writes a reply:
                    at = full.rfind(str(msgs[i]["content"]))  # split the full rendering at the reply instead
                    head, full = (full[:at], full) if at >= 0 else (head, head + str(msgs[i]["content"]))
                tail = full[len(head):]
                ex = _chat_example(tok, [(head, -1), (tail, i)], msgs[:i + 1], seq_len, "last")
                if ex is not None:
                    out.append(ex)
            continue
        ex = _chat_example(tok, pieces, msgs, seq_len, loss_on)
        if ex is not None:
            out.append(ex)
    return out


def _chat_example(tok, pieces: list[tuple[str, int]], msgs: list[dict], seq_len: int, loss_on: str) -> Example | None:
    last = max(i for _, i in pieces)

    def counts(i: int) -> bool:
        return loss_on == "all" or (i >= 0 and (loss_on == "assistant" or i == last))

    ids: list[int] = []
    mask: list[bool] = []
    last_start = 0
    if getattr(tok, "is_fast", False):  # the whole text at once, as apply_chat_template(tokenize=True) does
        owner: list[int] = []  # per character: the piece's message index
        for text, i in pieces:
            owner += [i] * len(text)
        enc = tok("".join(t for t, _ in pieces), add_special_tokens=False, return_offsets_mapping=True)
        prev, seen_last = -1, False
        for t, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]):
            i = owner[b - 1] if b > a else prev  # a token belongs to the piece of its last character
            if i == last and not seen_last:
                last_start, seen_last = len(ids), True
            ids.append(t)
            mask.append(counts(i))
            prev = i
    else:  # slow tokenizers (no offsets): piece by piece
        for text, i in pieces:
            piece = tok(text, add_special_tokens=False)["input_ids"]
            if i == last:
                last_start = len(ids)
            ids += piece
            mask += [counts(i)] * len(piece)
    ids, mask = ids[:seq_len], mask[:seq_len]
    if len(ids) < 2:
        return None
    mask[0] = False  # the first token is never predicted
    if not any(mask):
        return None
    start = mask.index(True)
    targets = [t for t, m in zip(ids, mask) if m]
    return Example(ids, start=start, prompt_len=max(1, min(last_start, len(ids) - 1)), n_bytes=_bytes_of(tok, targets),
                   mask=mask, messages=msgs, loss_on=loss_on)


# ------------------------------------------------------------------ rows and batches

def pack_lengths(lengths: Sequence[int], seq_len: int) -> list[list[int]]:
    """Greedy packing in order, on example lengths: rows of example indices, consecutive examples
    sharing a row while they fit in `seq_len`."""
    rows: list[list[int]] = []
    cur: list[int] = []
    used = 0
    for i, length in enumerate(lengths):
        n = min(length, seq_len)
        if cur and used + n > seq_len:
            rows.append(cur)
            cur, used = [], 0
        cur.append(i)
        used += n
    if cur:
        rows.append(cur)
    return rows


def pack(examples: Sequence[Example], seq_len: int) -> list[list[Example]]:
    """Greedy packing in order: consecutive examples share a row while they fit in `seq_len`."""
    return [[examples[i] for i in row] for row in pack_lengths([len(e.ids) for e in examples], seq_len)]


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
            if ex.mask is not None:  # chat data: position t predicts token t+1 where mask[t+1]
                keep = torch.tensor(ex.mask[1:n], dtype=torch.bool)
                lab = torch.where(keep, x[1:], IGNORE)
                labels[b, o:o + n - 1] = lab
                sign[b, o:o + n - 1] = torch.where(keep, ex.sign, 0.0)
            elif n > s:  # position t predicts token t+1 for t+1 in [start, n)
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

    def __init__(self, rows: Sequence[Sequence[Example]] | Sequence[Sequence[int]], batch_size: int, pad_id: int, *,
                 packed: bool, shuffle: bool = True, seed: int = 0, grad_accum: int = 1, with_prompts: bool = False,
                 rank: int = 0, world: int = 1, examples: Sequence[Example] | None = None):
        """`rows`: lists of examples, or, with `examples` (e.g. `StreamedExamples`), lists of indices
        into it, the examples read when their batch is made."""
        if batch_size % world:
            raise ValueError(f"data.batch_size {batch_size} must be divisible by the number of processes {world}")
        self.rows, self.batch_size, self.pad_id = list(rows), batch_size, pad_id
        self.examples = examples
        self.packed, self.shuffle, self.seed, self.grad_accum = packed, shuffle, seed, grad_accum
        self.with_prompts = with_prompts
        self.rank, self.world = rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _row(self, i: int) -> Sequence[Example]:
        row = self.rows[i]
        return row if self.examples is None else [self.examples[j] for j in row]

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
            full = [collate([self._row(i) for i in g], self.pad_id, packed=self.packed,
                            with_prompts=self.with_prompts) for g in window]
            tokens = sum(int((b["labels"] != IGNORE).sum()) for b in full)  # over every process
            for g, b in zip(window, full):
                if self.world > 1:
                    b = collate([self._row(i) for i in g[self.rank * per:(self.rank + 1) * per]], self.pad_id,
                                packed=self.packed, with_prompts=self.with_prompts)
                # len(window), not grad_accum: the engine divides the last, short window by its length
                b["norm"] = torch.tensor(max(tokens, 1) / (len(window) * self.world))
                yield b


def rows_of(examples: Sequence[Example], seq_len: int, packed: bool) -> list[list[Example]]:
    return pack(examples, seq_len) if packed else [[e] for e in examples]

# ------------------------------------------------------------------ streamed (indexed) JSONL examples

class StreamedExamples(Sequence[Example]):
    """The examples of a JSONL file (prompt/response pairs or chat), read from disk when a batch
    needs them: one pass at the start tokenizes every line to record where each example is (the
    line's byte offset and its number among the line's examples) and its length, about 16 bytes per
    example, so that packing, shuffling, DDP slicing and resuming work as on a list; a batch then
    reads and tokenizes its own lines again. `make(record, line)` turns one JSON object into its
    examples (the same function as the in-memory path, so both give the same examples)."""

    def __init__(self, path: str | Path, make, keep: Sequence[int] | None = None, *, max_records: int | None = None,
                 _index=None):
        from array import array

        self.path, self.make = Path(path), make
        if not self.path.is_file():
            raise ConfigError(f"data.path: {str(path)!r} is not a file.")
        if _index is None:
            offsets, subs, lengths = array("q"), array("i"), array("i")
            with open(self.path, "rb") as f:
                pos, records = 0, 0
                for n, raw in enumerate(f, 1):
                    if raw.strip() and (max_records is None or records < max_records):
                        records += 1
                        for j, ex in enumerate(self._parse(raw, n)):
                            offsets.append(pos)
                            subs.append(j)
                            lengths.append(len(ex.ids))
                    pos += len(raw)
            _index = (offsets, subs, lengths)
        self._index = _index
        self._keep = array("q", range(len(_index[0])) if keep is None else keep)
        self._line: tuple[int, list[Example]] | None = None  # the last line read (its examples)
        self._fh: Any = None  # one read handle per process (opened on first use, again after a fork)
        self._fh_pid = -1

    def _file(self):
        if self._fh is None or self._fh_pid != os.getpid():
            self._fh, self._fh_pid = open(self.path, "rb"), os.getpid()
        return self._fh

    def __getstate__(self) -> dict:  # a pickled copy (a loader worker) opens its own handle
        state = dict(self.__dict__)
        state["_fh"], state["_fh_pid"] = None, -1
        return state

    def __del__(self) -> None:
        fh = getattr(self, "_fh", None)
        if fh is not None and self._fh_pid == os.getpid():
            fh.close()

    def _parse(self, raw: bytes, n: int) -> list[Example]:
        return self.make(parse_line(raw, self.path, n), f"{self.path}:{n}")

    def subset(self, keep: Sequence[int]) -> StreamedExamples:
        """The examples at positions `keep` of this sequence, sharing its index."""
        return StreamedExamples(self.path, self.make, [self._keep[i] for i in keep], _index=self._index)

    def __len__(self) -> int:
        return len(self._keep)

    def length(self, i: int) -> int:
        return self._index[2][self._keep[i]]

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        k = self._keep[i]
        offset, sub = self._index[0][k], self._index[1][k]
        if self._line is None or self._line[0] != offset:
            f = self._file()
            f.seek(offset)
            self._line = (offset, self._parse(f.readline(), -1))
        return self._line[1][sub]


def rows_of_lengths(examples: Sequence[Example], seq_len: int, packed: bool) -> list[list[int]]:
    """Rows of example indices (packed or one example each), from the lengths alone."""
    lengths = [examples.length(i) for i in range(len(examples))] if isinstance(examples, StreamedExamples) \
        else [len(e.ids) for e in examples]
    return pack_lengths(lengths, seq_len) if packed else [[i] for i in range(len(lengths))]

