"""Records of a public dataset (SCBench, MuSiQue, 2Wiki, SAMSum), from the HF hub or a local file of the same shape,
with one-line errors.

Both paths go through HF `datasets` (the hub id, or its "json" loader for `--data FILE`: JSONL or a JSON array),
so a local copy parses exactly as the hub's does. Every failure (no `datasets`, no network, an unreadable file, a
record of another shape) becomes a one-line UsageError that says what to do instead.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from cachebench.errors import UsageError
from cachebench.hub import hub_endpoint, hub_reachable

MAX_REASON = 200
MAX_DATA_BYTES = 2 * 2**30  # the most bytes a --data file may hold or decompress to; a .gz may expand 1000-fold
MAX_DATA_BYTES_ENV = "CACHEBENCH_MAX_DATA_BYTES"  # overrides MAX_DATA_BYTES
_CHUNK = 1 << 20


def load_records(hub_id: str, split: str, data_path: str | None, limit: int, shape: str, config: str | None = None,
                 keep_columns: Callable[[str], bool] | None = None) -> list[dict[str, Any]]:
    """The first `limit` records (all when limit <= 0) of the hub split (of `config`, for datasets that have
    several), or of the local file when one is given. `shape` names the record format in messages ("MuSiQue's").
    `keep_columns` drops the columns it rejects before the records become dicts (SemBenchmark's precomputed
    embeddings would otherwise take gigabytes).
    """
    hub_name = f"{hub_id} {config}" if config else hub_id
    where = f"--data {data_path}" if data_path else f"{hub_name} ({split} split)"
    try:
        import datasets
    except ImportError:
        raise UsageError(
            f"{where}: loading {shape} records needs the datasets package (pip install 'cachebench[data]')"
        ) from None
    if data_path:
        check_data_size(data_path)
    try:
        if data_path:
            dataset = _quietly(lambda: datasets.load_dataset("json", data_files=data_path, split="train"), datasets)
        else:
            if not hub_reachable():
                raise OSError(f"{hub_endpoint()} cannot be reached")
            dataset = datasets.load_dataset(hub_id, config, split=split)
    except Exception as exc:  # the hub and the json loader fail in many ways; all mean "no data"
        raise UsageError(
            f"could not load {where} ({one_line(exc)}); --data FILE takes a local JSONL of {shape} record shape"
        ) from exc
    if limit > 0:
        dataset = dataset.select(range(min(limit, len(dataset))))
    if keep_columns is not None:
        dataset = dataset.select_columns([name for name in dataset.column_names if keep_columns(name)])
    records = dataset.to_list()
    if not records:
        raise UsageError(f"{where}: no records")
    return records


def _quietly(load: Callable[[], Any], datasets: Any) -> Any:
    """Run a local load without datasets' "Generating train split" bars (noise around a one-line error)."""
    shown = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        return load()
    finally:
        if shown:
            datasets.enable_progress_bars()


def one_line(exc: BaseException) -> str:
    """The innermost cause of an exception as one short line (datasets wraps parse errors in a generic one)."""
    while exc.__cause__ is not None and str(exc.__cause__).strip():
        exc = exc.__cause__
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


def require(record: Mapping[str, Any], key: str, where: str, shape: str) -> Any:
    """record[key], or a one-line UsageError naming the record and the expected shape."""
    value = record.get(key)
    if value is None:
        raise UsageError(f"{where}: missing {key!r} (expected {shape} record shape)")
    return value


def record_id(record: Mapping[str, Any], index: int) -> str:
    """The record's own id ("id" or "_id"), else its position."""
    for key in ("id", "_id"):
        if record.get(key) is not None:
            return str(record[key])
    return str(index)


# --- size limits of local data files --------------------------------------------------------------------------------

def max_data_bytes() -> int:
    """The limit on a --data file's bytes (decompressed): $CACHEBENCH_MAX_DATA_BYTES, else 2 GiB."""
    raw = os.environ.get(MAX_DATA_BYTES_ENV, "").strip()
    if not raw:
        return MAX_DATA_BYTES
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise UsageError(f"{MAX_DATA_BYTES_ENV}={raw}: expected a positive number of bytes")
    return value


def _size(count: int) -> str:
    """Bytes as written in the environment variable, and readably."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= scale:
            return f"{count} bytes ({count / scale:.1f} {unit})"
    return f"{count} bytes"


def too_large(label: str, limit: int, how: str = "holds") -> UsageError:
    """The one-line error for data past the limit, saying how to raise it."""
    return UsageError(f"{label}: {how} more than {_size(limit)}, the limit for --data files (set "
                      f"{MAX_DATA_BYTES_ENV} to a larger number of bytes to allow it)")


def read_capped(stream: BinaryIO, label: str, limit: int) -> bytes:
    """All of `stream`, read in chunks and stopped as soon as it passes `limit` bytes: a decompressing stream is
    never expanded in full before its size is known."""
    chunks, total = [], 0
    while chunk := stream.read(_CHUNK):
        total += len(chunk)
        if total > limit:
            raise too_large(label, limit, "decompresses to")
        chunks.append(chunk)
    return b"".join(chunks)


def check_data_size(path: str | Path) -> None:
    """Refuse a --data file over the limit before a reader that decompresses on its own (datasets' json loader
    unpacks a .gz into its cache) sees it: the file's size, and a gzip file's decompressed size, counted by
    streaming it (nothing is kept)."""
    limit = max_data_bytes()
    file = Path(path)
    try:
        size = file.stat().st_size
    except OSError:
        return  # missing or unreadable: the reader says so in its own words
    if size > limit:
        raise too_large(str(path), limit)
    if file.suffix.lower() != ".gz":
        return
    total = 0
    try:
        with gzip.open(file, "rb") as stream:
            while chunk := stream.read(_CHUNK):
                total += len(chunk)
                if total > limit:
                    raise too_large(str(path), limit, "decompresses to")
    except (OSError, EOFError):
        return  # not gzip after all, or damaged: the reader reports it in its own words
