"""Result files to leaderboard cells: KV cells with ratios to `full`, semantic cells with their sweep curves."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import duckdb

from cachebench.leaderboard.cells import Leaderboard
from cachebench.leaderboard.kv import kv_cells
from cachebench.leaderboard.semantic import semantic_cells
from cachebench.resultdb import open_results, partial_runs, scan_failure

# errors of the queries themselves, never of the files: they stay tracebacks
_OUR_BUGS = (duckdb.BinderException, duckdb.ParserException, duckdb.CatalogException, duckdb.InternalException)


def aggregate(paths: Iterable[str | Path], penalty_ms: float | None = None) -> Leaderboard:
    """Read every result file of `paths` (files or directories, searched recursively) and summarise its cells;
    `penalty_ms` is the semantic cost model's price of a wrong hit (default: the LLM's cost)."""
    connection, files, rows = open_results(paths)
    try:
        semantic, curves = semantic_cells(connection, files, penalty_ms)
        return Leaderboard(rows=rows, sources=files, kv=kv_cells(connection, files), semantic=semantic, curves=curves,
                           partial=partial_runs(connection))
    except _OUR_BUGS:
        raise
    except duckdb.Error as exc:  # a file damaged past the footer that open_results checked
        raise scan_failure(files, exc) from None
    finally:
        connection.close()

