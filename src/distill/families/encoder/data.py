"""Sentences from text files or folders (e.g. tinyshakespeare passages, `fortunes` quotes), a fixed
held-out split, and a seeded loader of tokenised batches `{"input_ids", "attention_mask"}` (B, T),
with `"label"` (B,) when the rows are labelled (-1 = unlabeled). A student with a tokenizer of its
own (`student.path` with another vocabulary) gets the same texts in its own ids as
`"student_input_ids"`, `"student_attention_mask"` (B, T')."""
from __future__ import annotations

import random
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from distill.errors import ConfigError

FORTUNE_SEPARATOR = "%"


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():  # fortune folders hold `name`, `name.dat` (index) and `name.u8` (links)
        return sorted(f for f in path.iterdir() if f.is_file() and f.suffix not in (".dat", ".u8", ".gz"))
    raise ConfigError(f"data.paths: {str(path)!r} is neither a file nor a folder.")


def split_text(text: str, separator: str) -> list[str]:
    """Pieces of `text`; separator "%" splits on lines holding only "%" (the fortune format)."""
    if separator == FORTUNE_SEPARATOR:
        return re.split(r"^%\s*$", text, flags=re.M)
    return text.split(separator)


def read_sentences(paths: Sequence[str | Path], separator: str = "\n\n", min_chars: int = 20,
                   max_chars: int = 400) -> list[str]:
    """Whitespace-normalised, de-duplicated pieces of every file, in file order."""
    out, seen = [], set()
    for p in paths:
        for f in _files(Path(p)):
            text = f.read_bytes().decode("utf-8", errors="ignore")
            for piece in split_text(text, separator):
                s = " ".join(piece.split())[:max_chars]
                if len(s) >= min_chars and s not in seen:
                    seen.add(s)
                    out.append(s)
    if not out:
        raise ConfigError(f"data.paths: no piece of at least {min_chars} characters in {list(map(str, paths))}.")
    return out


def split_sentences(sentences: list[str], n_eval: int, seed: int) -> tuple[list[str], list[str]]:
    """(train, held-out): a seeded shuffle, the first `n_eval` held out."""
    if len(sentences) < n_eval + 10:
        raise ConfigError(f"data.eval_sentences: {n_eval} held-out sentences leave too few of {len(sentences)} to train on.")
    order = list(range(len(sentences)))
    random.Random(seed).shuffle(order)
    return [sentences[i] for i in order[n_eval:]], [sentences[i] for i in order[:n_eval]]


def tokenize(tok, sentences: Sequence[str], max_length: int) -> list[list[int]]:
    return tok(list(sentences), truncation=True, max_length=max_length, add_special_tokens=True)["input_ids"]


def collate(rows: Sequence[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    t = max(len(r) for r in rows)
    ids = torch.full((len(rows), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), t), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    return {"input_ids": ids, "attention_mask": mask}


class SentenceLoader:
    """Shuffled batches of token lists; the order is a function of (seed, epoch), so resumes are exact."""

    def __init__(self, rows: list[list[int]], batch_size: int, pad_id: int, *, seed: int = 0, shuffle: bool = True,
                 labels: list[int] | None = None, student_rows: list[list[int]] | None = None,
                 student_pad_id: int = 0):
        self.rows, self.batch_size, self.pad_id, self.seed, self.shuffle = rows, batch_size, pad_id, seed, shuffle
        if labels is not None and len(labels) != len(rows):
            raise ValueError(f"{len(labels)} labels for {len(rows)} rows")
        if student_rows is not None and len(student_rows) != len(rows):
            raise ValueError(f"{len(student_rows)} student rows for {len(rows)} rows")
        self.labels, self.student_rows, self.student_pad_id = labels, student_rows, student_pad_id
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.rows) // self.batch_size if self.shuffle else -(-len(self.rows) // self.batch_size)
        return max(1, n)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        order = list(range(len(self.rows)))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            b = collate([self.rows[i] for i in idx], self.pad_id)
            if self.student_rows is not None:  # the same texts in the student's own ids
                s = collate([self.student_rows[i] for i in idx], self.student_pad_id)
                b.update(student_input_ids=s["input_ids"], student_attention_mask=s["attention_mask"])
            if self.labels is not None:
                b["label"] = torch.tensor([self.labels[i] for i in idx], dtype=torch.long)
            yield b
