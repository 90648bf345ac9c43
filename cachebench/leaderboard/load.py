"""Result files as one DuckDB view, `results`, of only the columns the leaderboard reads.

DuckDB scans the Parquet files itself (both cores, needed columns only), which on a million rows is several
times faster than building the full table with `read_results` first. Files are still found and checked as
`read_results` does: the same discovery, the same schema versions accepted (older versions read with the
columns they lack as nulls), the same one-line errors. A `source` column is each row's index into the files.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from cachebench.errors import UsageError
from cachebench.results import METADATA_KEY, SCHEMA, SCHEMA_VERSION, UPGRADABLE, _files, check_columns

ROWS = "results"
SOURCE = "source"
COLUMNS = ("run_id", "created_at", "cachebench_version", "git_sha", "task", "mode", "compression", "method",
           "method_params", "model", "model_weights", "hardware", "episode_id", "turn", "category", "metric", "score",
           "reused_tokens", "kv_bytes", "prefill_ms", "ttft_ms", "outcome", "lookup_ms", "stale", "warmup", "error",
           "run_complete")
_SQL_TYPES = {pa.string(): "VARCHAR", pa.float64(): "DOUBLE", pa.int64(): "BIGINT", pa.int32(): "INTEGER",
              pa.bool_(): "BOOLEAN", pa.timestamp("us", tz="UTC"): "TIMESTAMPTZ"}


def open_results(paths: Iterable[str | Path]) -> tuple[duckdb.DuckDBPyConnection, list[Path], int]:
    """(a connection with the view `results`, the files behind it, their row count).

    Errors are one-line UsageErrors: no paths, a missing path, no result files, an unreadable or foreign file.
    """
    paths = list(paths)
    if not paths:
        raise UsageError("no result files or directories given")
    files = _once(_files(paths))
    present: set[str] = set()
    rows = 0
    for file in files:
        names, count = _checked(file)
        present |= names
        rows += count
    connection = duckdb.connect()
    columns = ", ".join(name if name in present else f"NULL::{_SQL_TYPES[SCHEMA.field(name).type]} AS {name}"
                        for name in COLUMNS)
    listed = ", ".join("'" + str(file).replace("'", "''") + "'" for file in files)
    connection.execute(f"CREATE VIEW {ROWS} AS SELECT {columns}, file_index::INTEGER AS {SOURCE} "
                       f"FROM read_parquet([{listed}], union_by_name = true)")
    try:
        scanned = connection.execute(f"SELECT count(*) FROM {ROWS}").fetchone()[0]
    except duckdb.Error as exc:
        raise UsageError(_one_line(f"cannot read the result files ({exc})")) from None
    if scanned != rows:  # DuckDB expands glob characters: a file name with `*` or `[` matched other files
        raise UsageError("a result file's name contains glob characters (*, ?, [) that match other files; rename it")
    return connection, files, rows


def scan_failure(files: list[Path], error: Exception) -> UsageError:
    """The one-line error for a scan that failed past the footer checks, naming the first damaged file."""
    for file in files:
        try:
            pq.read_table(file)
        except (pa.ArrowException, OSError) as exc:
            return UsageError(_one_line(f"{file}: not a readable Parquet file ({exc})"))
    return UsageError(_one_line(f"cannot read the result files ({type(error).__name__}: {error})"))


def _once(files: list[Path]) -> list[Path]:
    """Each file once, in first-named order: a file named and also inside a named folder is not read twice."""
    seen: set[Path] = set()
    unique = []
    for file in files:
        if file.resolve() not in seen:
            seen.add(file.resolve())
            unique.append(file)
    return unique


def _checked(file: Path) -> tuple[set[str], int]:
    """The columns and row count of a cachebench result file, or the error read_results would raise."""
    try:
        metadata = pq.read_metadata(file)
    except (pa.ArrowInvalid, OSError) as exc:
        raise UsageError(_one_line(f"{file}: not a readable Parquet file ({exc})")) from None
    version = (metadata.metadata or {}).get(METADATA_KEY)
    if version is None:
        raise UsageError(f"{file}: not a cachebench result file (no schema version)")
    version_text = version.decode(errors="replace")
    if version_text not in (SCHEMA_VERSION, *UPGRADABLE):
        raise UsageError(f"{file}: schema version {version_text}, this cachebench reads {SCHEMA_VERSION}")
    schema = metadata.schema.to_arrow_schema()
    check_columns(file, schema, version_text, complete=False)  # a text `score` would fail in DuckDB's binder
    return set(schema.names), metadata.num_rows


def _one_line(message: str) -> str:
    return " ".join(message.split())
