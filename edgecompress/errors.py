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


def suggest(name: str, choices: Iterable[str], n: int = 3) -> str:
    """' (did you mean a, b?)' for the closest matches of `name`, or ''."""
    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    return f" (did you mean {', '.join(close)}?)" if close else ""
