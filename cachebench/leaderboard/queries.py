"""DuckDB queries shared by both tracks: numbering a track's cells, grouping per cell, and the provenance every
cell carries.

A track is a view over `results` whose first columns are the cell key. Group-bys run over the view itself
(DuckDB scans the Parquet files, vectorised, both cores) and only their small results are joined to the cell
numbers, so no per-row table is ever materialised.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from cachebench.leaderboard.cells import Provenance
from cachebench.leaderboard.load import SOURCE


def text_keys(key: tuple[str, ...]) -> str:
    """Select list of the key columns with nulls as '' (joins and group-bys then treat them as one value)."""
    return ", ".join(f"coalesce({column}, '') AS {column}" for column in key)


def number_cells(connection: duckdb.DuckDBPyConnection, name: str, select: str, key: tuple[str, ...]
                 ) -> list[tuple[str, ...]]:
    """Create view `name` from `select` and table `name`_keys numbering its cells 0.. in key order; return the
    keys in that order."""
    keys = ", ".join(key)
    connection.execute(f"CREATE TEMP VIEW {name} AS {select}")
    connection.execute(f"CREATE TEMP TABLE {name}_keys AS SELECT row_number() OVER (ORDER BY {keys}) - 1 AS cell, "
                       f"{keys} FROM (SELECT DISTINCT {keys} FROM {name})")
    return connection.execute(f"SELECT {keys} FROM {name}_keys ORDER BY cell").fetchall()


def per_cell(name: str, key: tuple[str, ...], aggregates: str, where: str = "TRUE", by: str = "",
             order: str = "") -> str:
    """A query of `cell`, then `aggregates` grouped by the cell key (and `by`, a comma-led list of more group
    columns, output after `cell`), over the rows of view `name` that satisfy `where`."""
    keys = ", ".join(key)
    return (f"SELECT k.cell, g.* EXCLUDE ({keys}) FROM (SELECT {keys}{by}, {aggregates} FROM {name} WHERE {where} "
            f"GROUP BY ALL) g JOIN {name}_keys k USING ({keys}) {order}")


def provenance(connection: duckdb.DuckDBPyConnection, name: str, key: tuple[str, ...], files: list[Path]
               ) -> list[Provenance]:
    """Per cell (in cell order): rows, weights, hardware, versions, commits, dates, runs and files.

    Rows are first grouped per run and origin (few groups), then those groups per cell: distinct lists over a
    million rows directly cost several times more.
    """
    origin = "run_id, model_weights, hardware, cachebench_version, git_sha, " + SOURCE
    runs = per_cell(name, key, "count(*) AS size, min(created_at) AS first, max(created_at) AS last, "
                               "bool_or(run_complete = false) AS partial", by=", " + origin)
    found = connection.execute(f"""
        SELECT cell, sum(size)::BIGINT, list(DISTINCT model_weights), list(DISTINCT hardware),
               list(DISTINCT cachebench_version), list(DISTINCT git_sha), min(first), max(last), list(DISTINCT run_id),
               list(DISTINCT {SOURCE}), list(DISTINCT run_id) FILTER (WHERE partial)
        FROM ({runs}) GROUP BY cell ORDER BY cell""").fetchall()
    return [Provenance(rows=rows, model_weights=_distinct(weights), hardware=_distinct(hardware),
                       versions=_distinct(versions), git_shas=_distinct(shas), first_run=first, last_run=last,
                       run_ids=_distinct(runs), sources=tuple(files[i] for i in sorted(sources)),
                       partial_runs=_distinct(partial or []))
            for _, rows, weights, hardware, versions, shas, first, last, runs, sources, partial in found]


def _distinct(values: list[str | None]) -> tuple[str, ...]:
    return tuple(sorted(v for v in values if v is not None))
