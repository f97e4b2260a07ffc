"""Tabular training examples for the pair methods (margin_mse, parallel_mse, cross_encoder_kd): rows of
JSONL, TSV or CSV files (`.gz` read compressed) or of a Hugging Face `datasets` folder
(`save_to_disk`), with columns named in the recipe (`data.columns`) or found by their usual names.

Two kinds of example, each a plain dict:

- ranking: `{"query": str, "passages": [positive, negative_1, ..., negative_k], "label": None | float
  | list}` (k may be 0: a (query, passage) pair). The label, when the data has one, is read as
  sentence-transformers reads MarginMSE labels: one number = the margin of one negative (or the score
  of a pair), k numbers = one margin per negative, k + 1 numbers = the scores of the positive then of
  each negative.
- parallel: `{"source": str, "translations": [str, ...]}` (one translation per named column).

Rows are split once (seeded by `data.split_seed`) into training rows and `data.eval_sentences`
held-out rows; the texts of each part also feed the family's sentence-agreement evaluation.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from distill.data.jsonl import jsonl_rows
from distill.errors import ConfigError

TABULAR = {".jsonl": "jsonl", ".json": "jsonl", ".tsv": "tsv", ".csv": "csv"}
# role -> the column names looked for when `data.columns` does not name one (first found wins)
DEFAULT_COLUMNS: dict[str, tuple[str, ...]] = {
    "query": ("query", "anchor", "question"),
    "positive": ("positive", "passage", "document", "pos"),
    "label": ("label", "margin", "score", "scores"),
    "source": ("source", "english", "anchor"),
    "translation": ("translation", "non_english", "target"),
}
ALIASES = {"passage": "positive", "negative": "negatives", "margin": "label", "score": "label",
           "translations": "translation", "anchor": "query"}
ROLES = ("query", "positive", "negatives", "label", "source", "translation")
KIND_ROLES = {"ranking": ("query", "positive", "negatives", "label"), "parallel": ("source", "translation")}


def data_format(path: Path, fmt: str) -> str:
    """The format of one data path: `data.format`, or from the suffix (`.gz` stripped); a folder
    holding `dataset_dict.json` or `state.json` is a `datasets` folder."""
    if fmt != "auto":
        return fmt
    if path.is_dir():
        return "hf" if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file() else "text"
    suffix = path.suffixes[-2] if path.suffix == ".gz" and len(path.suffixes) > 1 else path.suffix
    return TABULAR.get(suffix.lower(), "text")


def is_tabular(paths: Sequence[str | Path], fmt: str) -> bool:
    kinds = {data_format(Path(p), fmt) != "text" for p in paths}
    if len(kinds) > 1:
        raise ConfigError(f"data.paths: {list(map(str, paths))} mixes text files with tabular ones (jsonl, tsv, csv, "
                          "a datasets folder); give one kind.")
    return kinds == {True}


def _text(path: Path) -> str:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    return raw.decode("utf-8")


@dataclass
class Row:
    values: dict[str, Any]
    where: str  # "FILE line N" (or "FILE row N"), for errors


def read_rows(path: Path, fmt: str, names: Sequence[str] | None = None) -> tuple[list[Row], list[str]]:
    """The rows of one file or `datasets` folder and its column names; `names`: the columns of a
    tsv/csv file without a header row."""
    kind = data_format(path, fmt)
    if not path.exists():
        raise ConfigError(f"data.paths: {str(path)!r} does not exist.")
    if kind == "jsonl":
        rows, cols = [], {}
        for n, obj in jsonl_rows(path, "data.paths"):
            cols.update(dict.fromkeys(obj))
            rows.append(Row(obj, f"{path} line {n}"))
        return rows, list(cols)
    if kind in ("tsv", "csv"):
        delimiter = "\t" if kind == "tsv" else ","
        if names:  # no header row: the recipe names the columns
            rows = []
            quoting = csv.QUOTE_NONE if kind == "tsv" else csv.QUOTE_MINIMAL  # MS MARCO passages hold stray quotes
            for i, cells in enumerate(csv.reader(io.StringIO(_text(path)), delimiter=delimiter, quoting=quoting), 1):
                if not cells or all(not c.strip() for c in cells):
                    continue
                if len(cells) != len(names):
                    raise ConfigError(f"{path} line {i}: {len(cells)} columns, data.column_names names {len(names)} "
                                      f"({', '.join(names)}).")
                rows.append(Row(dict(zip(names, cells)), f"{path} line {i}"))
            return rows, list(names)
        reader = csv.DictReader(io.StringIO(_text(path)), delimiter=delimiter)
        cols = list(reader.fieldnames or [])
        # line numbers count the header as line 1
        return [Row(r, f"{path} line {i + 2}") for i, r in enumerate(reader)], cols
    if kind == "hf":
        from distill.data.streamed import load_hf

        ds = load_hf(str(path), "train", "data.paths")
        return [Row(dict(r), f"{path} row {i}") for i, r in enumerate(ds)], list(ds.column_names)
    raise ConfigError(f"data.paths: {str(path)!r} is a {kind} file; the pair methods read jsonl, tsv, csv or a "
                      "datasets folder (data.format).")


def resolve_columns(columns: dict[str, str | list[str]], kind: str, file_cols: list[str], where: str
                    ) -> dict[str, list[str]]:
    """Role -> the file's column name(s) for one kind of example: `data.columns` first (a named column
    must exist), then the usual names; negatives default to every column named negative*."""
    given: dict[str, list[str]] = {}
    for key, v in columns.items():
        role = ALIASES.get(key, key)
        if role not in ROLES:
            raise ConfigError(f"data.columns.{key}: unknown role; allowed: query, positive (or passage), "
                              "negatives (or negative), label (or margin, score), source, translation.")
        given[role] = [v] if isinstance(v, str) else list(v)
    out: dict[str, list[str]] = {}
    for role in KIND_ROLES[kind]:
        if role in given:
            for c in given[role]:
                if c not in file_cols:
                    raise ConfigError(f"data.columns.{role}: column {c!r} is not in {where} "
                                      f"(its columns: {', '.join(file_cols) or 'none'}).")
            out[role] = given[role]
        elif role == "negatives":
            out[role] = sorted((c for c in file_cols if c.lower().startswith(("negative", "neg_")) or c == "neg"),
                               key=lambda c: (len(c), c))
        else:
            found = next((c for c in DEFAULT_COLUMNS[role] if c in file_cols and c not in sum(out.values(), [])), None)
            out[role] = [found] if found else []
    required = ("query", "positive") if kind == "ranking" else ("source", "translation")
    for role in required:
        if not out[role]:
            names = ", ".join(DEFAULT_COLUMNS[role])
            raise ConfigError(f"data.columns.{role}: {where} has no {role} column (looked for {names}; its columns: "
                              f"{', '.join(file_cols) or 'none'}); name it in the recipe, e.g. "
                              f"data.columns: {{{role}: COLUMN}}.")
    return out


def _string(row: Row, col: str, role: str) -> str:
    v = row.values.get(col)
    if not isinstance(v, str) or not v.strip():
        raise ConfigError(f"{row.where}: column {col!r} ({role}) is {'missing' if v is None else repr(v)[:40]}; "
                          "every row needs a text there.")
    return " ".join(v.split())


def _label(row: Row, col: str) -> float | list[float]:
    v = row.values.get(col)
    if isinstance(v, str):  # a tsv/csv cell: a number, or a JSON list
        try:
            v = json.loads(v)
        except ValueError:
            pass
    try:
        return [float(x) for x in v] if isinstance(v, (list, tuple)) else float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"{row.where}: column {col!r} (label) is {repr(v)[:40]}; give a number, or a list of "
                          "numbers (one margin per negative, or the scores of the positive then each negative).") from None


def to_example(row: Row, roles: dict[str, list[str]], kind: str) -> dict[str, Any]:
    if kind == "parallel":
        return {"source": _string(row, roles["source"][0], "source"),
                "translations": [_string(row, c, "translation") for c in roles["translation"]]}
    passages = [_string(row, roles["positive"][0], "positive")]
    passages += [_string(row, c, "negative") for c in roles["negatives"]]
    if len(roles["label"]) > 1:  # one score per column (e.g. score_pos, score_neg)
        parts = [_label(row, c) for c in roles["label"]]
        if any(isinstance(x, list) for x in parts):
            raise ConfigError(f"{row.where}: data.columns.label names {len(parts)} columns; each must hold one number.")
        label: float | list[float] | None = [float(x) for x in parts]  # type: ignore[arg-type]
    else:
        label = _label(row, roles["label"][0]) if roles["label"] else None
    k = len(passages) - 1
    if isinstance(label, list) and len(label) not in (k, k + 1) or (isinstance(label, float) and k > 1):
        n = len(label) if isinstance(label, list) else 1
        raise ConfigError(f"{row.where}: column {roles['label'][0]!r} holds {n} number(s) for {k} negative(s); give "
                          f"{k} margins or {k + 1} scores (positive first).")
    return {"query": _string(row, roles["query"][0], "query"), "passages": passages, "label": label}


def target_margins(labels: Sequence[float | list[float]], k: int) -> torch.Tensor:
    """Teacher margins (B, k) from data labels read as in `to_example`."""
    rows = []
    for lab in labels:
        v = [lab] if not isinstance(lab, list) else lab
        rows.append([v[0] - x for x in v[1:]] if len(v) == k + 1 else v)
    return torch.tensor(rows, dtype=torch.float32)


@dataclass
class Examples:
    kind: str
    train: list[dict[str, Any]]
    held: list[dict[str, Any]]
    columns: dict[str, list[str]]
    files: list[str]

    @property
    def has_labels(self) -> bool:
        return bool(self.columns.get("label"))

    def texts(self, part: str) -> list[str]:
        """Every text of the training or held-out examples, in order, without repeats."""
        seen: dict[str, None] = {}
        for ex in (self.train if part == "train" else self.held):
            for t in ([ex["query"], *ex["passages"]] if self.kind == "ranking" else [ex["source"], *ex["translations"]]):
                seen.setdefault(t)
        return list(seen)


def read_texts_by_id(path: str | Path, wanted: set[str], where: str) -> dict[str, str]:
    """id -> text of the ids in `wanted`, streamed from a `id<TAB>text` TSV (MS MARCO collection.tsv,
    queries.tsv; no header) or a BEIR JSONL ({"_id", "title", "text"}; title and text joined); the
    other lines are not kept, so that a collection of millions of passages is read in little memory."""
    from distill.data.jsonl import jsonl_rows, open_text

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{where}: {str(path)!r} is not a file.")
    out: dict[str, str] = {}
    if data_format(path, "auto") == "jsonl":
        for n, row in jsonl_rows(path, where):
            if "_id" not in row or "text" not in row:
                raise ConfigError(f"{path}, line {n}: a BEIR line is {{\"_id\": ..., \"title\": ..., \"text\": ...}}.")
            if str(row["_id"]) in wanted:
                out[str(row["_id"])] = " ".join(f"{row.get('title') or ''} {row['text']}".split())
        return out
    with open_text(path) as f:
        for n, line in enumerate(f, 1):
            key, tab, text = line.rstrip("\r\n").partition("\t")
            if not tab:
                if line.strip():
                    raise ConfigError(f"{path} line {n}: expected `id<TAB>text`.")
                continue
            if key in wanted:
                out[key] = " ".join(text.split())
    return out


def resolve_ids(rows: list[Row], roles: dict[str, list[str]], collection: str | None, queries: str | None) -> None:
    """Replace passage ids (positive and negative columns) by the collection's texts and query ids
    by the queries' texts, in place; an id missing from its file is a ConfigError naming the row."""
    for source, cols, field in ((collection, roles.get("positive", []) + roles.get("negatives", []), "data.collection"),
                                (queries, roles.get("query", []), "data.queries")):
        if source is None or not cols:
            continue
        wanted = {str(r.values.get(c)).strip() for r in rows for c in cols}
        texts = read_texts_by_id(source, wanted, field)
        for r in rows:
            for c in cols:
                key = str(r.values.get(c)).strip()
                if key not in texts:
                    raise ConfigError(f"{r.where}: column {c!r} holds id {key!r}, which {field} ({source}) does not "
                                      "have.")
                r.values[c] = texts[key]


def read_examples(paths: Sequence[str | Path], fmt: str, columns: dict[str, str | list[str]], kind: str,
                  n_eval: int, seed: int, max_rows: int | None = None, *, column_names: Sequence[str] | None = None,
                  collection: str | None = None, queries: str | None = None) -> Examples:
    """The examples of every path (one column mapping for all files), split into train and held-out
    rows. `column_names`: the columns of headerless tsv/csv files; `collection` / `queries`: files of
    texts by id when the rows hold ids (MS MARCO's id triples and score files)."""
    out: list[dict[str, Any]] = []
    roles: dict[str, list[str]] | None = None
    for p in paths:
        rows, cols = read_rows(Path(p), fmt, column_names)
        r = resolve_columns(columns, kind, cols, str(p))
        if roles is not None and r != roles:
            raise ConfigError(f"data.paths: {p} has columns {r} for the roles, the first file {roles}; name them "
                              "in data.columns (one mapping for every file).")
        roles = r
        if max_rows:
            rows = rows[:max(max_rows - len(out), 0)]
        if collection or queries:
            resolve_ids(rows, r, collection, queries)
        out += [to_example(row, r, kind) for row in rows]
    if max_rows:
        out = out[:max_rows]
    if len(out) < n_eval + 10:
        raise ConfigError(f"data.eval_sentences: {n_eval} held-out rows leave too few of the {len(out)} rows in "
                          f"{list(map(str, paths))} to train on.")
    order = list(range(len(out)))
    random.Random(seed).shuffle(order)
    assert roles is not None
    return Examples(kind, [out[i] for i in order[n_eval:]], [out[i] for i in order[:n_eval]], roles,
                    [str(p) for p in paths])


def tokenize_pairs(tok, queries: Sequence[str], passages: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
    """A cross-encoder's input for (query, passage) pairs: one sequence per pair, cut at `max_length`
    tokens (longest first), as `CrossEncoder.predict` tokenizes. (N, T) tensors."""
    enc = tok(list(queries), list(passages), truncation=True, max_length=max_length, padding=True,
              return_tensors="pt")
    return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def tokenize_texts(tok, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
    """Single texts padded to the longest: (N, T) `input_ids`, `attention_mask`."""
    enc = tok(list(texts), truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


class ExampleLoader:
    """Shuffled batches of examples made into tensors by `collate`; the order is a function of
    (seed, epoch), as in `SentenceLoader`, so resumes are exact."""

    def __init__(self, examples: list[dict[str, Any]], batch_size: int, collate: Callable[[list], dict], *,
                 seed: int = 0, shuffle: bool = True):
        self.examples, self.batch_size, self.collate, self.seed, self.shuffle = examples, batch_size, collate, seed, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.examples) // self.batch_size if self.shuffle else -(-len(self.examples) // self.batch_size)
        return max(1, n)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        order = list(range(len(self.examples)))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        for b in range(len(self)):
            yield self.collate([self.examples[i] for i in order[b * self.batch_size:(b + 1) * self.batch_size]])
