"""What the LongMemEval and LoCoMo loaders share: reading a JSON file of records with one-line errors, checking
fields, rendering dated sessions one utterance per line, and fitting a history to --context-tokens.

Both datasets are read with the standard json module, not HF `datasets`: their records nest lists of sessions of
turns, and LongMemEval's `answer` is a string in some records and a number in others, which Arrow's schema
inference (what `datasets`' json loader does) rejects. A file may be a JSON array (as both are published) or
JSON lines.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from cachebench.errors import UsageError
from cachebench.tasks.builders.hub_records import check_data_size, one_line

TYPE_NAMES = {str: "a string", list: "a list", dict: "an object", int: "a number", bool: "true or false"}


def read_records(path: str | Path, label: str, shape: str) -> list[Any]:
    """The records of a JSON array or JSON-lines file; `label` names the file in messages. A file past the
    --data size limit is refused unread; a leading UTF-8 byte-order mark is dropped."""
    try:
        check_data_size(path)
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{label}: cannot read ({one_line(exc)})") from exc
    stripped = text.lstrip()
    try:
        if stripped.startswith("["):
            records = json.loads(text)
        else:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
    except ValueError as exc:
        raise UsageError(f"{label}: not JSON ({one_line(exc)}); expected a JSON array of {shape} records") from exc
    if not records:
        raise UsageError(f"{label}: no records")
    return records


def require_field(record: Any, key: str, kind: type | tuple[type, ...], where: str, shape: str) -> Any:
    """record[key] checked to be of `kind`, or a one-line UsageError naming where and the expected shape."""
    if not isinstance(record, Mapping):
        raise UsageError(f"{where}: not an object (expected {shape} record shape)")
    value = record.get(key)
    if value is None:
        raise UsageError(f"{where}: missing {key!r} (expected {shape} record shape)")
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        wanted = " or ".join(TYPE_NAMES.get(k, k.__name__) for k in kinds)
        raise UsageError(f"{where}: {key!r} must be {wanted}, got {type(value).__name__} (expected {shape} record "
                         "shape)")  # fmt: skip
    return value


def one_line_text(text: Any) -> str:
    """An utterance on one line: internal newlines and runs of spaces collapsed."""
    return " ".join(str(text).split())


def render_session(number: int, date: str, lines: Sequence[tuple[str, str]]) -> str:
    """A dated session header, then one "speaker: utterance" line per turn."""
    header = f"Session {number} ({date}):" if date else f"Session {number}:"
    return "\n".join([header, *(f"{speaker}: {one_line_text(text)}" for speaker, text in lines)])


def fit_sessions(
    sessions: Sequence[tuple[str, Sequence[tuple[str, str]]]],
    keep: Collection[int],
    target: int,
    count_tokens: Callable[[str], int],
) -> str:
    """The history of (date, lines) sessions, numbered in order. When target > 0 and the history is longer, the
    sessions not in `keep` (those holding the answers) are dropped, oldest first, until it fits; kept sessions
    are never dropped, so a history of answer sessions alone may stay longer than the target."""
    kept = list(range(len(sessions)))

    def text() -> str:
        return "\n\n".join(render_session(n, sessions[i][0], sessions[i][1]) for n, i in enumerate(kept, start=1))

    if target <= 0:
        return text()
    sizes = {i: count_tokens(render_session(i + 1, sessions[i][0], sessions[i][1])) for i in kept}
    separator = count_tokens("\n\n")
    droppable = [i for i in kept if i not in keep]

    def estimate() -> int:
        return sum(sizes[i] for i in kept) + separator * max(0, len(kept) - 1)

    while droppable and estimate() > target:
        kept.remove(droppable.pop(0))
    while droppable and count_tokens(text()) > target:  # the estimate is per session; check the joined text
        kept.remove(droppable.pop(0))
    return text()
