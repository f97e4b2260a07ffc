"""JSON Lines files (plain or gzip), read one object at a time: the reader every family's row data
uses (prompt/response and chat data, ranking rows, relevance judgements)."""
from __future__ import annotations

import gzip
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from distill.errors import ConfigError


def open_text(path: str | os.PathLike) -> io.TextIOBase:
    """A UTF-8 text stream of `path`, decompressed when it ends in .gz."""
    path = Path(path)
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def jsonl_rows(path: str | os.PathLike, where: str = "data.path") -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line of a JSONL file; a line that is not a JSON
    object is a ConfigError naming the file and the line. `where` names the recipe field that gave
    the path, for the error when the file is missing."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{where}: {str(path)!r} is not a file.")
    with open_text(path) as f:
        for n, text in enumerate(f, start=1):
            if text.strip():
                yield n, parse_line(text, path, n)


def parse_line(text: str | bytes, path: str | os.PathLike, n: int) -> dict[str, Any]:
    """The JSON object on line `n` of `path`; anything else is a ConfigError naming the line."""
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}, line {n}: not JSON ({e.msg}).") from None
    if not isinstance(row, dict):
        raise ConfigError(f"{path}, line {n}: a JSON object per line is expected, not {type(row).__name__}.")
    return row
