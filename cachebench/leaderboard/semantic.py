"""Semantic-cache cells of the leaderboard: cachebench.semantic.summary's cells (the ones `show` prints), with the
task family a page groups them by, their provenance, and each group's sweep curves.

Per (task, model, mode) group, every swept method's hit-rate-versus-error-rate points and frontier area come
from cachebench.semantic.report.tradeoff.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import duckdb

from cachebench.cells import IDENTITY
from cachebench.leaderboard.cells import Curve, SemanticEntry
from cachebench.leaderboard.queries import provenance
from cachebench.semantic.report import SemanticCell, tradeoff
from cachebench.semantic.summary import VIEW, semantic_summary

KEY = ("family", *IDENTITY)


def semantic_cells(connection: duckdb.DuckDBPyConnection, files: list[Path], penalty_ms: float | None = None
                   ) -> tuple[list[SemanticEntry], dict[tuple[str, str, str], dict[str, Curve]]]:
    """Every semantic cell of the `items` view on `connection`, and each group's sweep curves."""
    cells = semantic_summary(connection, KEY, penalty_ms)
    if not cells:
        return [], {}
    origins = provenance(connection, VIEW, KEY, files)
    entries = [SemanticEntry(family=cell.key["family"], cell=cell, provenance=origin)
               for cell, origin in zip(cells, origins, strict=True)]
    return entries, _curves(entries)


def _curves(entries: list[SemanticEntry]) -> dict[tuple[str, str, str], dict[str, Curve]]:
    by_group: dict[tuple[str, str, str], list[SemanticCell]] = defaultdict(list)
    for entry in entries:
        by_group[entry.group].append(entry.cell)
    return {group: found for group, cells in by_group.items() if (found := tradeoff(cells))}
