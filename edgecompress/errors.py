"""Errors a user can act on.

Anything raised as `UserError` reaches the CLI user as one line on stderr
(what was wrong, with which value, and what to do) and exit code 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Bad input from the user: a message that says what and how to fix."""

    exit_code = 2


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of `exc`'s message (cut to `limit` characters), or its type name if empty."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if limit is None else line[:limit]


def suggest(name: str, choices: Iterable[str], n: int = 3) -> str:
    """' (did you mean a, b?)' for the closest matches of `name`, or ''."""
    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def check_keys(kind: str, data: Iterable[str], known: Iterable[str]) -> None:
    """ValueError naming the first unknown key of `data` (with a did-you-mean) and the valid ones.

    `kind` says whose keys they are, e.g. "TrainConfig field" or "prune parameter".
    """
    known = sorted(known)
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise ValueError(f"unknown {kind} {unknown[0]!r}{suggest(unknown[0], known)}; valid: {', '.join(known)}")
