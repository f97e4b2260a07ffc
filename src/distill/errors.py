"""Errors a user can act on. The CLI prints them without a traceback and exits with code 2."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class DistillError(Exception):
    """Base class of errors caused by input (recipes, files, names), not by a bug."""


class ConfigError(DistillError):
    """A recipe or override is invalid. The message names the field, the value and the fix."""


class CacheMismatchError(DistillError):
    """A teacher-output cache does not match the run (other teacher, data, temperature, k) or is corrupt."""


def closest(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """The up-to-`n` choices closest to `name` (difflib ratio), best first."""
    choices = list(choices)
    found = difflib.get_close_matches(name, choices, n=n, cutoff=0.4)
    if not found:  # substring matches help for long dotted module names
        found = [c for c in choices if name.split(".")[-1] in c][:n]
    return found


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    found = closest(name, choices)
    return f" Did you mean: {', '.join(found)}?" if found else ""
