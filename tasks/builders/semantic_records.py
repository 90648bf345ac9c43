"""Records of a semantic dataset from a local file (`--data FILE`) or the hub, with one-line errors that name the
file and the record.

Local files are read here rather than through HF `datasets`: its JSON loader infers one Arrow type per column and
fails on a bad value without saying which record holds it, while a user fixing a file needs "record 12: 'label'
must be 0 or 1". JSON arrays, JSON Lines, Parquet (pyarrow) and CSV are read; a `.gz` file may be gzip or a tar
archive (GPTCache ships its pair files as tar.gz named .json.gz). Hub datasets still go through hub_records.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import tarfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cachebench.errors import UsageError
from cachebench.tasks.builders.hub_records import (
    check_data_size,
    load_records,
    max_data_bytes,
    one_line,
    read_capped,
    too_large,
)


def records(data_path: str | None, shape: str, *, hub_id: str | None = None, split: str = "train",
            config: str | None = None, limit: int = 0, keep: Callable[[str], bool] | None = None
            ) -> tuple[list[dict[str, Any]], str]:
    """The records and the name to use in messages: `data_path` when given, else the hub dataset (or a
    UsageError saying that the task needs --data FILE when it has no hub source)."""
    if data_path:
        found = read_local(data_path, shape, keep)
        return (found[:limit] if limit > 0 else found), data_path
    if hub_id is None:
        raise UsageError(f"this task needs --data FILE (a local file of {shape} record shape); it has no hub source")
    where = f"{hub_id} {config}" if config else hub_id
    return load_records(hub_id, split, None, limit, shape, config, keep_columns=keep), f"{where} ({split} split)"


def read_local(path: str, shape: str, keep: Callable[[str], bool] | None = None) -> list[dict[str, Any]]:
    """Every record of a local file, as dicts; the file's format is chosen by its extension."""
    file = Path(path)
    if file.is_dir():
        raise UsageError(f"{path}: is a directory (--data takes one local file of {shape} record shape)")
    if not file.is_file():
        raise UsageError(f"{path}: no such file (--data takes a local file of {shape} record shape)")
    suffix = file.suffix.lower()
    try:
        if suffix == ".parquet":
            found = _parquet(file, keep)
        elif suffix == ".csv":
            found = _csv(file)
        else:
            found = _json(path, _text(file))
    except UsageError:
        raise
    except (OSError, UnicodeDecodeError, tarfile.TarError, ValueError) as exc:
        raise UsageError(f"{path}: cannot read ({one_line(exc)}); expected a file of {shape} record shape") from exc
    except Exception as exc:  # pyarrow raises its own error types for files that are not Parquet
        raise UsageError(f"{path}: not a readable {suffix.lstrip('.') or 'data'} file ({one_line(exc)})") from exc
    if not found:
        raise UsageError(f"{path}: empty file, no records (expected {shape} record shape)")
    return found


def _text(file: Path) -> str:
    """The file's text, a leading UTF-8 byte-order mark dropped (spreadsheet exports write one). A `.gz` is the
    first regular member of a tar archive, else a gzip stream; either way decompressed within the size limit."""
    if file.suffix.lower() == ".gz":
        data = _gz_payload(file, max_data_bytes())
    else:
        check_data_size(file)
        data = file.read_bytes()
    return data.decode("utf-8-sig")


def _gz_payload(file: Path, limit: int) -> bytes:
    """The decompressed payload of a .gz, read in chunks and refused past `limit` (a gzip bomb is a few kB that
    expand to gigabytes); a tar member whose header declares more is refused before a byte of it is read."""
    try:
        with tarfile.open(file, mode="r:*") as archive:  # any compression, as GPTCache names tar.gz files .json.gz
            member = archive.next()
            while member is not None and not member.isfile():
                member = archive.next()
            if member is None:
                return b""
            label = f"{file} (tar member {member.name})"
            if member.size > limit:
                raise too_large(label, limit, "decompresses to")
            extracted = archive.extractfile(member)
            return read_capped(extracted, label, limit) if extracted is not None else b""
    except tarfile.ReadError:
        pass  # not a tar archive: a plain gzip stream
    with gzip.open(file, "rb") as stream:
        return read_capped(stream, str(file), limit)


def _json(path: str, text: str) -> list[dict[str, Any]]:
    """A JSON array of objects, or JSON Lines (one object per line)."""
    body = text.strip()
    if not body:
        return []
    whole = None
    if body.startswith("{"):  # one object over several lines, or JSON Lines
        try:
            whole = [json.loads(body)]
        except json.JSONDecodeError:
            whole = None
    if body.startswith("["):
        try:
            items = json.loads(body)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path} line {exc.lineno}: invalid JSON ({exc.msg})") from None
        rows = list(enumerate(items, start=1))
    elif whole is not None:
        rows = [(1, whole[0])]
    else:
        rows = []
        for line_number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((len(rows) + 1, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise UsageError(f"{path} line {line_number}: invalid JSON ({exc.msg})") from None
    for number, item in rows:
        if not isinstance(item, dict):
            raise UsageError(f"{path} record {number}: not a JSON object ({type(item).__name__})")
    return [item for _, item in rows]


def _parquet(file: Path, keep: Callable[[str], bool] | None) -> list[dict[str, Any]]:
    """The kept columns' rows; their uncompressed size, which the footer states, is checked against the limit
    first (Parquet pages are compressed too)."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(file)
    names = parquet.schema_arrow.names
    columns = [name for name in names if keep is None or keep(name)]
    limit = max_data_bytes()
    if _uncompressed_bytes(parquet.metadata, set(columns)) > limit:
        raise too_large(str(file), limit, "decompresses to")
    return pq.read_table(file, columns=columns).to_pylist()


def _uncompressed_bytes(metadata: Any, columns: set[str]) -> int:
    """The uncompressed size of the given top-level columns, as the Parquet footer records it per column chunk."""
    total = 0
    for group in range(metadata.num_row_groups):
        row_group = metadata.row_group(group)
        for index in range(row_group.num_columns):
            chunk = row_group.column(index)
            if chunk.path_in_schema.split(".")[0] in columns:
                total += chunk.total_uncompressed_size
    return total


def _csv(file: Path) -> list[dict[str, Any]]:
    """Rows of a CSV with a header line; a leading byte-order mark (Excel's "CSV UTF-8") is not part of the first
    column's name."""
    check_data_size(file)
    with file.open(newline="", encoding="utf-8-sig") as handle:
        return [dict(row) for row in csv.DictReader(handle)]


# --- field checks --------------------------------------------------------------------------------------------------

def at(where: str, number: int) -> str:
    """How messages name a record: 1-based, as a person counts them in the file."""
    return f"{where} record {number}"


def text_field(record: Mapping[str, Any], key: str | tuple[str, ...], place: str, shape: str) -> str:
    """A non-empty string field (the first present of several spellings)."""
    keys = (key,) if isinstance(key, str) else key
    value = next((record[name] for name in keys if record.get(name) is not None), None)
    if value is None:
        raise UsageError(f"{place}: missing {keys[0]!r} (expected {shape} record shape)")
    if not isinstance(value, str | int | float) or isinstance(value, bool) or not str(value).strip():
        raise UsageError(f"{place}: {keys[0]!r} must be non-empty text, got {value!r}")
    return str(value)


def user_field(record: Mapping[str, Any], place: str, default: str = "u0") -> str:
    """A request's user (tenant) id, kept exactly as written so that distinct ids stay distinct users: text or an
    integer; absent (or null) means `default`. An empty id, or another type, is refused: a cache scoped per user
    must never merge two users because their ids look alike."""
    value = record.get("user")
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise UsageError(f"{place}: 'user' must be text or an integer, got {value!r}")
    text = str(value)
    if not text.strip():
        raise UsageError(f"{place}: 'user' is empty (leave it out for the default user {default!r})")
    return text


def label_field(record: Mapping[str, Any], key: str | tuple[str, ...], place: str, shape: str) -> int:
    """A 0/1 label (ints, bools, and the strings "0"/"1" of a CSV), under the first present of several names."""
    keys = (key,) if isinstance(key, str) else key
    key = next((name for name in keys if record.get(name) is not None), keys[0])
    if record.get(key) is None:
        others = "".join(f" (or {name!r})" for name in keys[1:])
        raise UsageError(f"{place}: missing {key!r}{others} (expected {shape} record shape)")
    value = record[key]
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float) and value in (0, 1):
        return int(value)
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return int(value.strip())
    raise UsageError(f"{place}: {key!r} must be 0 or 1, got {value!r}")


def timestamp_field(value: Any, place: str, previous: float) -> float:
    """A stream timestamp: a finite number of seconds, not negative, not before the previous request's."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise UsageError(f"{place}: timestamp must be a number of seconds, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UsageError(f"{place}: timestamp must be a number of seconds, got {value!r}")
    if value < 0:
        raise UsageError(f"{place}: timestamp must not be negative, got {value!r}")
    if value < previous:
        raise UsageError(f"{place}: timestamps go backwards ({value} after {previous})")
    return float(value)
