"""Errors that the CLI shows as one line with exit code 2 (bad input), never as a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path


class UsageError(Exception):
    """The user asked for something that cannot be done as stated (unknown name, bad value, unusable file)."""


def unknown_name(kind: str, name: str, known: Iterable[str]) -> UsageError:
    """Build the error for an unknown method/task/preset name, with the closest known names as suggestions."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else f"; known: {', '.join(known)}"
    return UsageError(f"unknown {kind} {name!r}{hint}")


class RunInterrupted(Exception):
    """Ctrl-C or SIGTERM during a run: the rows finished so far were written to `path`, marked partial."""

    def __init__(self, path: Path | None, rows: int, problem: str | None = None) -> None:
        if path:
            message = f"interrupted; {rows} finished rows kept in {path} (marked partial)"
        else:
            message = "interrupted; no rows" if not rows else f"interrupted; {problem}"
        super().__init__(message)
        self.path, self.rows = path, rows
