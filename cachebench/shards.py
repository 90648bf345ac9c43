"""Episode shards and stable run identities: what lets many workers split one cell and a killed run continue.

A shard `I/N` is a contiguous block of each task's episodes (block I of N, from 0, sizes differing by at most one),
so the union of a cell's N shards is exactly the unsharded run's episodes and no episode is in two shards. A run
with a stable id (`EvalRequest.run_id`: a sweep derives it from the cell and the shard) writes OUT/<id>.parquet;
when that file is a checkpoint of a killed run, the run keeps its rows and runs only the episodes it lacks.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TypeVar

from cachebench.errors import UsageError

Item = TypeVar("Item")
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=-]{0,199}")
MAX_SHARDS = 1_000_000


def parse_shard(text: str) -> tuple[int, int]:
    """`I/N` (0 <= I < N) as (I, N), or a one-line UsageError."""
    found = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not found:
        raise UsageError(f"--shard {text!r}: expected I/N, shard I (counted from 0) of N, e.g. 0/4")
    shard = int(found[1]), int(found[2])
    check_shard(shard)
    return shard


def check_shard(shard: tuple[int, int] | None) -> None:
    if shard is None:
        return
    index, count = shard
    if not 1 <= count <= MAX_SHARDS:
        raise UsageError(f"--shard {index}/{count}: the number of shards must be between 1 and {MAX_SHARDS}")
    if not 0 <= index < count:
        raise UsageError(f"--shard {index}/{count}: the shard index counts from 0 and must be below {count}")


def shard_label(shard: tuple[int, int] | None) -> str | None:
    """The `shard` column's value: "I/N", or null for a run of all episodes."""
    return None if shard is None else f"{shard[0]}/{shard[1]}"


def select_shard(items: list[Item], shard: tuple[int, int] | None) -> list[Item]:
    """Block I of N of `items`: items[floor(I*len/N) : floor((I+1)*len/N)] (empty when N exceeds the count)."""
    if shard is None:
        return items
    index, count = shard
    return items[index * len(items) // count:(index + 1) * len(items) // count]


def check_run_id(run_id: str | None) -> None:
    """A stable run id names a file, so it is a plain file name: letters, digits and . _ = - only."""
    if run_id is not None and not _RUN_ID.fullmatch(run_id):
        raise UsageError(f"run id {run_id!r}: use letters, digits and . _ = - only (it names the result file)")


def earlier_rows(path: Path, run_id: str) -> tuple[list[dict[str, Any]], bool]:
    """(the rows of an earlier run with this id at `path`, whether that run finished); ([], False) when there is
    no such file. A file written by another run, or one that cannot be read, is an error: resuming from it would
    mix two runs' items, and overwriting it would lose them."""
    if not path.exists():
        return [], False
    from cachebench.results import read_results  # pyarrow, lazily

    try:
        table = read_results([path])
    except UsageError as exc:
        raise UsageError(f"cannot continue run {run_id}: {exc}") from None
    ids = set(table.column("run_id").to_pylist())
    if ids - {run_id}:
        raise UsageError(f"cannot continue run {run_id}: {path} holds rows of run {sorted(ids - {run_id})[0]}")
    rows = table.to_pylist()
    return rows, bool(rows) and all(row.get("run_complete") for row in rows)


def finished_episodes(rows: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(task, episode_id) of every episode the rows hold: a run appends an episode's rows all at once, after its
    last turn, so an episode in a checkpoint is a finished one."""
    return {(row["task"], row["episode_id"]) for row in rows}
