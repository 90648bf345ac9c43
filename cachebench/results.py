"""Result rows: the Parquet schema both tracks share, atomic writing, and reading many files back.

One row per KV turn or semantic request. The schema is documented column by column in docs/results.md; its
version is stored in the file's metadata under `cachebench.schema_version`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cachebench.derived import derive
from cachebench.errors import UsageError

SCHEMA_VERSION = "9"
REUSE_TIERS = ("device", "cpu", "disk")  # where a reuse method's store found blocks
_TIER_COLUMNS = tuple(f"reused_{tier}_tokens" for tier in REUSE_TIERS)
# semantic-track columns added in version 4 (null on KV rows)
_SEMANTIC_V4 = ("user", "class_id", "served_class", "warmup", "embed_ms", "fetch_ms", "llm", "llm_ms", "cache_entries",
                "cache_bytes")
# run-completeness and store-repair columns added in version 6 (null in older files: completeness unknown)
_RUN_V6 = ("reuse_corrupt_blocks", "run_planned", "run_complete")
# columns every reader used to work out for itself, written since version 7 (cachebench.derived fills them in for
# older files, from the columns those have)
_DERIVED_V7 = ("track", "cell_params", "context_length", "request_ttft_ms", "exact_match")
# semantic-track column added in version 8: how request embeddings were computed and charged (null in older files:
# a batch computed up front, its mean time per text charged to each request)
_SEMANTIC_V8 = ("embed_mode",)
# column added in version 9: which part of a cell's episodes a run held (`eval --shard`, sweeps; null: all of them)
_SHARD_V9 = ("shard",)
# older versions are read by adding the columns they lack as nulls, then deriving what can be derived
UPGRADABLE = {
    "1": ("compression", *_TIER_COLUMNS, "reuse_load_ms", *_SEMANTIC_V4, "peak_kv_bytes", *_RUN_V6, *_DERIVED_V7,
          *_SEMANTIC_V8, *_SHARD_V9),
    "2": (*_TIER_COLUMNS, "reuse_load_ms", *_SEMANTIC_V4, "peak_kv_bytes", *_RUN_V6, *_DERIVED_V7, *_SEMANTIC_V8,
          *_SHARD_V9),
    "3": (*_SEMANTIC_V4, "peak_kv_bytes", *_RUN_V6, *_DERIVED_V7, *_SEMANTIC_V8, *_SHARD_V9),
    "4": ("peak_kv_bytes", *_RUN_V6, *_DERIVED_V7, *_SEMANTIC_V8, *_SHARD_V9),
    "5": (*_RUN_V6, *_DERIVED_V7, *_SEMANTIC_V8, *_SHARD_V9),
    "6": (*_DERIVED_V7, *_SEMANTIC_V8, *_SHARD_V9),
    "7": (*_SEMANTIC_V8, *_SHARD_V9),
    "8": _SHARD_V9,
}
METADATA_KEY = b"cachebench.schema_version"
RUN_STATE_KEY = b"cachebench.run"  # {"complete": bool, "planned_rows": int, "rows": int}, since version 6

SCHEMA = pa.schema(
    [
        # run identity
        ("run_id", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("cachebench_version", pa.string()),
        ("git_sha", pa.string()),
        ("seed", pa.int64()),
        # what ran
        ("track", pa.string()),  # kv | semantic | perf: which harness wrote the row
        ("task", pa.string()),
        ("subtask", pa.string()),
        ("mode", pa.string()),
        ("compression", pa.string()),
        ("context_length", pa.int64()),  # the target context length a generated task was built for (null: as is)
        ("method", pa.string()),
        ("method_params", pa.string()),
        ("cell_params", pa.string()),  # method_params without storage/infrastructure settings: the cell's identity
        ("model", pa.string()),
        ("model_weights", pa.string()),
        ("dtype", pa.string()),
        ("device", pa.string()),
        ("hardware", pa.string()),
        ("attn_impl", pa.string()),
        ("timer", pa.string()),
        ("truncation", pa.string()),
        ("shard", pa.string()),  # "I/N": the run held shard I (from 0) of the cell's episodes split N ways; null: all
        # the item
        ("episode_id", pa.string()),
        ("turn", pa.int32()),
        ("category", pa.string()),
        # quality
        ("prediction", pa.string()),
        ("references", pa.list_(pa.string())),
        ("metric", pa.string()),
        ("score", pa.float64()),
        ("exact_match", pa.float64()),  # a secondary score where the task defines one (longconvqa), else null
        # cost
        ("context_tokens", pa.int64()),
        ("prompt_tokens", pa.int64()),
        ("output_tokens", pa.int64()),
        ("truncated_tokens", pa.int64()),
        ("reused_tokens", pa.int64()),
        ("recomputed_tokens", pa.int64()),
        *((name, pa.int64()) for name in _TIER_COLUMNS),
        ("reuse_load_ms", pa.float64()),
        ("reuse_corrupt_blocks", pa.int64()),
        ("kv_bytes", pa.int64()),
        ("peak_mem_bytes", pa.int64()),
        ("peak_kv_bytes", pa.int64()),
        ("prefill_ms", pa.float64()),
        ("ttft_ms", pa.float64()),
        ("request_ttft_ms", pa.float64()),  # the whole request's time to first token, context prefill included
        ("decode_ms_per_token", pa.float64()),
        # semantic-cache outcome (null on KV rows)
        ("hit", pa.bool_()),
        ("outcome", pa.string()),
        ("similarity", pa.float64()),
        ("lookup_ms", pa.float64()),
        ("stale", pa.bool_()),
        ("user", pa.string()),
        ("class_id", pa.string()),
        ("served_class", pa.string()),
        ("warmup", pa.bool_()),
        ("embed_ms", pa.float64()),
        ("embed_mode", pa.string()),  # online, online:N (micro-batches), precomputed, or none (never embeds)
        ("fetch_ms", pa.float64()),
        ("llm", pa.string()),
        ("llm_ms", pa.float64()),
        ("cache_entries", pa.int64()),
        ("cache_bytes", pa.int64()),
        # failure
        ("error", pa.string()),
        # the run as a whole: how many rows it planned, and whether it finished (false: a checkpoint of a run that
        # was killed, interrupted or crashed; the file holds fewer rows than planned)
        ("run_planned", pa.int64()),
        ("run_complete", pa.bool_()),
    ],
    metadata={METADATA_KEY: SCHEMA_VERSION.encode()},
)

SEMANTIC_COLUMNS = ("hit", "outcome", "similarity", "lookup_ms", "stale", *_SEMANTIC_V4, *_SEMANTIC_V8)
REUSE_COLUMNS = (*_TIER_COLUMNS, "reuse_load_ms", "reuse_corrupt_blocks")  # null where a method reused nothing


def to_table(rows: Sequence[dict[str, Any]], run: dict[str, Any] | None = None) -> pa.Table:
    """Rows (dicts keyed by column) to a table of exactly SCHEMA; missing keys become nulls. `run` sets columns
    shared by every row (the run's completeness)."""
    run = run or {}
    columns = {field.name: [run[field.name]] * len(rows) if field.name in run else [row.get(field.name) for row in rows]
               for field in SCHEMA}
    return derive(pa.Table.from_pydict(columns, schema=SCHEMA))


def write_atomic(rows: Sequence[dict[str, Any]], path: Path, *, planned: int | None = None,
                 complete: bool | None = None) -> Path:
    """Write the rows to `path` through a temporary file and a rename: a reader never sees half a file.

    `planned` and `complete`, when given, are stamped on every row (a run's writer marks its checkpoints partial);
    otherwise each row keeps its own `run_planned` / `run_complete` (rows of finished runs carry them), and rows
    without them count as a complete run of the rows given. The file's metadata says whether all rows are complete.
    """
    run: dict[str, Any] = {}
    if planned is not None:
        run["run_planned"] = planned
    if complete is not None:
        run["run_complete"] = complete
    defaults = {"run_planned": len(rows), "run_complete": True}
    filled = [row if all(row.get(k) is not None for k in defaults) else
              {**row, **{k: v for k, v in defaults.items() if row.get(k) is None}} for row in rows]
    table = to_table(filled, run)
    whole = bool(pc.all(table["run_complete"]).as_py()) if table.num_rows else True
    most = max(table["run_planned"].to_pylist(), default=0)
    table = table.replace_schema_metadata({**table.schema.metadata, RUN_STATE_KEY: _run_state(whole, most,
                                                                                              len(rows))})
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def _run_state(complete: bool, planned: int, rows: int) -> bytes:
    return json.dumps({"complete": complete, "planned_rows": planned, "rows": rows}).encode()


def _files(paths: Iterable[str | Path]) -> list[Path]:
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*.parquet") if not p.name.startswith(".")))
        elif path.is_file():
            found.append(path)
        else:
            raise UsageError(f"no such results file or directory: {raw}")
    if not found:
        raise UsageError(f"no .parquet result files under {', '.join(map(str, paths))}")
    return found


def _upgrade(table: pa.Table, added: tuple[str, ...]) -> pa.Table:
    """A table of an older schema version in the current column order, the columns it lacked set to null."""
    for name in added:
        table = table.append_column(SCHEMA.field(name), pa.nulls(table.num_rows, SCHEMA.field(name).type))
    return table.select(SCHEMA.names)


def _castable(actual: pa.DataType, wanted: pa.DataType) -> bool:
    """Whether a column written as `actual` reads as SCHEMA's `wanted` without changing what it means: the same
    type, an all-null column, a narrower or wider number of the same kind, an integer where a float is wanted,
    a timestamp of another unit, a list of castable items. A string where a number is wanted is not."""
    if actual == wanted or pa.types.is_null(actual):
        return True
    kinds = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean, pa.types.is_timestamp)
    for kind in kinds:
        if kind(wanted):
            return kind(actual) or (pa.types.is_floating(wanted) and pa.types.is_integer(actual))
    if pa.types.is_string(wanted):
        return pa.types.is_string(actual) or pa.types.is_large_string(actual)
    if pa.types.is_list(wanted):
        return ((pa.types.is_list(actual) or pa.types.is_large_list(actual))
                and _castable(actual.value_type, wanted.value_type))
    return False


def check_columns(file: Path, schema: pa.Schema, version: str, *, complete: bool = True) -> None:
    """Refuse, in one line naming the file and the first bad column, a result file holding a column of a type that
    does not read as SCHEMA's (a score written as text) or, when `complete`, lacking a column its schema version
    has. Readers check this before they touch a row, so a damaged file never surfaces as a KeyError or a query
    engine's error deep inside. (The leaderboard reads the columns a file lacks as nulls, so it checks types only.)
    """
    added = set(UPGRADABLE.get(version, ()))
    for field in SCHEMA:
        index = schema.get_field_index(field.name)
        if index < 0:
            if complete and field.name not in added:
                raise UsageError(f"{file}: column {field.name!r} is missing (schema version {version} has it)")
            continue
        actual = schema.field(index).type
        if not _castable(actual, field.type):
            raise UsageError(f"{file}: column {field.name!r} is {actual}, expected {field.type} (schema version "
                             f"{version})")


def read_results(paths: Iterable[str | Path]) -> pa.Table:
    """All rows of the given files and directories (searched recursively), as one table of SCHEMA."""
    tables = []
    for file in _files(paths):
        try:
            table = pq.read_table(file)
        except (pa.ArrowInvalid, OSError) as exc:
            raise UsageError(f"{file}: not a readable Parquet file ({exc})") from None
        version = (table.schema.metadata or {}).get(METADATA_KEY)
        if version is None:
            raise UsageError(f"{file}: not a cachebench result file (no schema version)")
        version_text = version.decode(errors="replace")
        if version_text not in UPGRADABLE and version_text != SCHEMA_VERSION:
            raise UsageError(f"{file}: schema version {version_text}, this cachebench reads {SCHEMA_VERSION}")
        check_columns(file, table.schema, version_text)
        absent = tuple(name for name in UPGRADABLE.get(version_text, ()) if name not in table.column_names)
        table = _upgrade(table, absent)
        try:
            table = table.cast(SCHEMA)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:  # e.g. a value too large for its column
            raise UsageError(" ".join(f"{file}: a value does not fit its column ({exc})".split())) from None
        tables.append(derive(table) if absent else table)
    return pa.concat_tables(tables)


@dataclass(frozen=True)
class PartialRun:
    """A run whose file is a checkpoint: it was killed, interrupted or crashed before writing all its rows."""

    run_id: str
    rows: int
    planned: int


def describe_partial(run: PartialRun) -> str:
    return (f"partial run {run.run_id}: {run.rows} of {run.planned} planned rows (killed, interrupted or crashed "
            "before the end)")
