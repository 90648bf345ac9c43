"""Result files as DuckDB views every reader queries: `results` (all rows) and `items` (each item once, the newest
run's row: cachebench.cells.deduplicated).

DuckDB scans files of the current schema itself (both cores, needed columns only), which on a million rows is
several times faster than building the full table with `read_results` first. Files of older schema versions are
read by `read_results`, which adds the columns they lack and derives what can be derived (cachebench.derived), and
joined in. Files are found and checked as `read_results` does: the same discovery, the same schema versions
accepted, the same one-line errors. A `source` column is each row's index into the files.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from cachebench.cells import deduplicated, item_hash
from cachebench.derived import derive
from cachebench.errors import UsageError
from cachebench.results import (
    METADATA_KEY,
    SCHEMA,
    SCHEMA_VERSION,
    UPGRADABLE,
    PartialRun,
    _files,
    check_columns,
    read_results,
)

ROWS = "results"
ITEMS = "items"
SOURCE = "source"
_COLUMNS = ", ".join(f'"{name}"' for name in SCHEMA.names)  # quoted: `references` is an SQL keyword


def open_results(paths: Iterable[str | Path]) -> tuple[duckdb.DuckDBPyConnection, list[Path], int]:
    """(a connection with the views `results` and `items`, the files behind them, their row count).

    Errors are one-line UsageErrors: no paths, a missing path, no result files, an unreadable or foreign file.
    """
    paths = list(paths)
    if not paths:
        raise UsageError("no result files or directories given")
    files = _once(_files(paths))
    current, older = [], []
    rows = 0
    for index, file in enumerate(files):
        version, count = checked_file(file)
        rows += count
        (current if version == SCHEMA_VERSION else older).append(index)
    connection = _connect()
    parts = []
    if current:
        listed = ", ".join("'" + str(files[i]).replace("'", "''") + "'" for i in current)
        sources = ", ".join(str(i) for i in current)
        parts.append(f"SELECT {_COLUMNS}, list_extract([{sources}], file_index::INTEGER + 1) AS "
                     f"{SOURCE} FROM read_parquet([{listed}], union_by_name = true)")
    for index in older:
        table = read_results([files[index]])
        connection.register(f"older_{index}", table.append_column(SOURCE, pa.array([index] * table.num_rows,
                                                                                      pa.int32())))
        parts.append(f"SELECT {_COLUMNS}, {SOURCE} FROM older_{index}")
    connection.execute(f"CREATE VIEW {ROWS} AS {' UNION ALL '.join(parts)}")
    try:
        scanned = connection.execute(f"SELECT count(*) FROM {ROWS}").fetchone()[0]
        _create_items(connection)
    except duckdb.Error as exc:  # pages damaged behind an intact footer: name the file
        raise scan_failure(files, exc) from None
    if scanned != rows:  # DuckDB expands glob characters: a file name with `*` or `[` matched other files
        raise UsageError("a result file's name contains glob characters (*, ?, [) that match other files; rename it")
    return connection, files, rows


# Cell queries. A track is a view over `items` whose first columns are the cell key. Group-bys run over the view
# itself (DuckDB scans the Parquet files, vectorised, both cores) and only their small results are joined to the
# cell numbers, so no per-row table is ever materialised.


def text_keys(key: tuple[str, ...]) -> str:
    """Select list of the key columns as text with nulls as '' (joins and group-bys then treat them as one value)."""
    return ", ".join(f"coalesce(CAST({column} AS VARCHAR), '') AS {column}" for column in key)


def number_cells(connection: duckdb.DuckDBPyConnection, name: str, select: str, key: tuple[str, ...]
                 ) -> list[tuple[str, ...]]:
    """Create view `name` from `select` over the items (`{rows}` in `select` stands for the relation read), view
    `name`_all from the same select over every row (provenance: all runs and files behind a cell, also those whose
    rows a newer run replaced), and table `name`_keys numbering the cells 0.. in key order; return the keys in that
    order."""
    keys = ", ".join(key)
    connection.execute(f"CREATE TEMP VIEW {name} AS {select.format(rows=ITEMS)}")
    connection.execute(f"CREATE TEMP VIEW {name}_all AS {select.format(rows=ROWS)}")
    connection.execute(f"CREATE TEMP TABLE {name}_keys AS SELECT row_number() OVER (ORDER BY {keys}) - 1 AS cell, "
                       f"{keys} FROM (SELECT DISTINCT {keys} FROM {name})")
    return connection.execute(f"SELECT {keys} FROM {name}_keys ORDER BY cell").fetchall()


def per_cell(name: str, key: tuple[str, ...], aggregates: str, where: str = "TRUE", by: str = "",
             order: str = "", cells: str = "") -> str:
    """A query of `cell`, then `aggregates` grouped by the cell key (and `by`, a comma-led list of more group
    columns, output after `cell`), over the rows of view `name` that satisfy `where`; `cells` names the table
    numbering the cells (default `name`_keys)."""
    keys = ", ".join(key)
    return (f"SELECT k.cell, g.* EXCLUDE ({keys}) FROM (SELECT {keys}{by}, {aggregates} FROM {name} WHERE {where} "
            f"GROUP BY ALL) g JOIN {cells or name + '_keys'} k USING ({keys}) {order}")


def partial_runs(connection: duckdb.DuckDBPyConnection) -> list[PartialRun]:
    """The runs of `results` that did not finish (`run_complete` false), with the rows they left and planned.
    Every reader (show, leaderboard, gate) marks these, so a killed run is never read as a complete result."""
    found = connection.execute(f"""
        SELECT run_id, count(*), coalesce(max(run_planned), 0) FROM {ROWS} WHERE run_complete = false
        GROUP BY run_id ORDER BY run_id""").fetchall()
    return [PartialRun(run_id, int(rows), int(planned)) for run_id, rows, planned in found]


def open_table(table: pa.Table) -> duckdb.DuckDBPyConnection:
    """A connection with the views `results` and `items` over rows already in memory (one source, index 0), for
    callers that hold a table rather than files (the semantic benchmark, tests)."""
    connection = _connect()
    connection.register("memory_rows", derive(table).append_column(SOURCE, pa.array([0] * table.num_rows, pa.int32())))
    connection.execute(f"CREATE VIEW {ROWS} AS SELECT * FROM memory_rows")
    _create_items(connection)
    return connection


def _connect() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection that never draws a progress bar into a reader's output."""
    connection = duckdb.connect()
    connection.execute("SET enable_progress_bar = false")
    return connection


def _create_items(connection: duckdb.DuckDBPyConnection) -> None:
    """View `items`: `results` with each item once (cachebench.cells.deduplicated). Ranking every row costs a
    window over all of them (seconds at a million rows), so only the items held more than once are ranked, once,
    into a table every later query reads: one pass finds their hashes, and when there are none (the usual folder)
    `items` is `results` itself."""
    connection.execute(f"CREATE TEMP TABLE repeated_items AS SELECT {item_hash()} AS item FROM {ROWS} "
                       "GROUP BY item HAVING count(*) > 1")
    if not connection.execute("SELECT count(*) FROM repeated_items").fetchone()[0]:
        connection.execute(f"CREATE VIEW {ITEMS} AS SELECT * FROM {ROWS}")
        return
    connection.execute(f"""CREATE TEMP TABLE repeated_winners AS
        {deduplicated(f"(SELECT * FROM {ROWS} WHERE {item_hash()} IN (SELECT item FROM repeated_items))")}""")
    connection.execute(f"""CREATE VIEW {ITEMS} AS
        SELECT * FROM {ROWS} WHERE {item_hash()} NOT IN (SELECT item FROM repeated_items)
        UNION ALL BY NAME SELECT * FROM repeated_winners""")


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


def checked_file(file: Path) -> tuple[str, int]:
    """The schema version and row count of a cachebench result file, or the one-line error read_results would
    raise, from the file's footer alone."""
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
    check_columns(file, schema, version_text)  # a text `score` would fail in DuckDB's binder
    return version_text, metadata.num_rows


def _one_line(message: str) -> str:
    return " ".join(message.split())
