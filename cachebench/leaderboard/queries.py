"""The provenance every leaderboard cell carries: who ran it, where, when, from which files, with which settings."""

from __future__ import annotations

from pathlib import Path

import duckdb

from cachebench.leaderboard.cells import Provenance
from cachebench.resultdb import SOURCE, per_cell


def provenance(connection: duckdb.DuckDBPyConnection, name: str, key: tuple[str, ...], files: list[Path]
               ) -> list[Provenance]:
    """Per cell (in cell order): items counted, weights, hardware, versions, commits, dates, runs, files and the
    full method settings (stores, URLs) the identity leaves out. Runs, files and settings are those of every row
    of the cell (view `name`_all: a rerun's replaced rows too); items and partial runs those counted (`name`).

    Rows are first grouped per run and origin (few groups), then those groups per cell: distinct lists over a
    million rows directly cost several times more.
    """
    origin = "run_id, hardware, cachebench_version, git_sha, method_params, " + SOURCE
    runs = per_cell(f"{name}_all", key, "min(created_at) AS first, max(created_at) AS last", by=", " + origin,
                    cells=f"{name}_keys")
    found = connection.execute(f"""
        SELECT g.cell, any_value(k.model_weights), list(DISTINCT hardware), list(DISTINCT cachebench_version),
               list(DISTINCT git_sha), min(first), max(last), list(DISTINCT run_id), list(DISTINCT {SOURCE}),
               list(DISTINCT method_params)
        FROM ({runs}) g JOIN {name}_keys k USING (cell) GROUP BY g.cell ORDER BY g.cell""").fetchall()
    counted = {cell: (int(items), partial or []) for cell, items, partial in connection.execute(per_cell(
        name, key, "count(*), list(DISTINCT run_id) FILTER (WHERE run_complete = false)")).fetchall()}
    return [Provenance(rows=counted[cell][0], model_weights=_distinct([weights]), hardware=_distinct(hardware),
                       versions=_distinct(versions), git_shas=_distinct(shas), first_run=first, last_run=last,
                       run_ids=_distinct(runs), sources=tuple(files[i] for i in sorted(sources)),
                       partial_runs=_distinct(counted[cell][1]), settings=_distinct(settings))
            for cell, weights, hardware, versions, shas, first, last, runs, sources, settings in found]


def _distinct(values: list[str | None]) -> tuple[str, ...]:
    return tuple(sorted(v for v in values if v is not None))
