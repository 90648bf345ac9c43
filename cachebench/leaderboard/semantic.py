"""Semantic-cache cells, scored by cachebench.semantic.report's definitions from counts DuckDB groups.

A cell is (task, method, method_params, model, mode), as in `cachebench show`; warm-up and failed rows are left
out of the scores. Per category and overall: vCache's rates (cachebench.semantic.scoring.rates), intervals of
hit rate, error rate and F1, and lookup latency percentiles. Per (task, model, mode) group, every swept method's
hit-rate-versus-error-rate points and frontier area come from cachebench.semantic.report.tradeoff.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import duckdb
import numpy as np

from cachebench.leaderboard.bootstrap import outcome_intervals
from cachebench.leaderboard.cells import Curve, SemanticEntry
from cachebench.leaderboard.load import ROWS, SOURCE
from cachebench.leaderboard.queries import number_cells, per_cell, provenance, text_keys
from cachebench.semantic.report import ALL, CategoryScore, SemanticCell, tradeoff
from cachebench.semantic.scoring import rates
from cachebench.taskspec import SEMANTIC_METRIC

KEY = ("family", "task", "method", "method_params", "model", "mode")  # cachebench.semantic.report's, and family
OUTCOMES = np.array(["TP", "FP", "FN", "TN"])
_VIEW = "semantic_rows"
_SELECT = f"""
    SELECT {text_keys(KEY)}, coalesce(category, '') AS category, outcome, coalesce(stale, false) AS stale,
           CASE WHEN isfinite(lookup_ms) THEN lookup_ms END AS lookup_ms,
           error IS NULL AND NOT coalesce(warmup, false) AND coalesce(outcome, '') <> '' AS scored,
           error IS NOT NULL AS failed, run_id, model_weights, hardware, cachebench_version, git_sha, created_at,
           run_complete, {SOURCE}
    FROM (SELECT *, split_part(task, '.', 1) AS family FROM {ROWS} WHERE metric = '{SEMANTIC_METRIC}')"""
# outcome counts and lookup percentiles per (cell, category), and per cell (category NULL, `overall`)
_KEYS = ", ".join(KEY)
_COUNTS = f"""
    SELECT k.cell, g.* EXCLUDE ({_KEYS}) FROM (
        SELECT {_KEYS}, category, grouping(category) = 1 AS overall,
               count(*) FILTER (WHERE outcome = 'TP'), count(*) FILTER (WHERE outcome = 'FP'),
               count(*) FILTER (WHERE outcome = 'FN'), count(*) FILTER (WHERE outcome = 'TN'),
               count(*) FILTER (WHERE stale), quantile_cont(lookup_ms, [0.5, 0.95])
        FROM {_VIEW} WHERE scored GROUP BY GROUPING SETS (({_KEYS}, category), ({_KEYS}))) g
    JOIN {_VIEW}_keys k USING ({_KEYS})
    ORDER BY k.cell, g.overall, g.category"""
_ERRORS = per_cell(_VIEW, KEY, "count(*) FILTER (WHERE failed)")


def semantic_cells(connection: duckdb.DuckDBPyConnection, files: list[Path]
                   ) -> tuple[list[SemanticEntry], dict[tuple[str, str, str], dict[str, Curve]]]:
    """Every semantic cell of the `results` view on `connection`, and each group's sweep curves."""
    keys = number_cells(connection, _VIEW, _SELECT, KEY)
    if not keys:
        return [], {}
    groups = connection.execute(_COUNTS).fetchall()
    intervals = outcome_intervals(np.array([row[3:7] for row in groups], dtype=np.int64).reshape(-1, 4))
    by_category: dict[int, dict[str, CategoryScore]] = defaultdict(dict)
    overall_of: dict[int, CategoryScore] = {}
    for index, (cell, category, overall, tp, fp, fn, tn, stale, lookup) in enumerate(groups):
        judged = rates(np.repeat(OUTCOMES, [tp, fp, fn, tn]), np.arange(tp + fp + fn + tn) < stale)
        found = {name: (float(bounds[index, 0]), float(bounds[index, 1])) for name, bounds in intervals.items()
                 if np.isfinite(bounds[index]).all()}
        p50, p95 = lookup if lookup is not None else (None, None)
        score = CategoryScore(ALL if overall else category, judged, found, _float(p50), _float(p95), None)
        if overall:
            overall_of[cell] = score
        else:
            by_category[cell][category] = score
    errors = dict(connection.execute(_ERRORS).fetchall())
    entries = []
    for cell, (key, origin) in enumerate(zip(keys, provenance(connection, _VIEW, KEY, files), strict=True)):
        categories = [score for _, score in sorted(by_category[cell].items())]
        if len(categories) != 1:  # as report.summarize_semantic: the overall score last, unless one category
            categories.append(overall_of.get(cell) or CategoryScore(ALL, rates([], []), {}, np.nan, np.nan, None))
        semantic = SemanticCell(key=dict(zip(KEY[1:], key[1:], strict=True)), categories=categories,
                                errors=errors.get(cell, 0))
        entries.append(SemanticEntry(family=key[0], cell=semantic, provenance=origin))
    return entries, _curves(entries)


def _curves(entries: list[SemanticEntry]) -> dict[tuple[str, str, str], dict[str, Curve]]:
    by_group: dict[tuple[str, str, str], list[SemanticCell]] = defaultdict(list)
    for entry in entries:
        by_group[entry.group].append(entry.cell)
    return {group: found for group, cells in by_group.items() if (found := tradeoff(cells))}


def _float(value: float | None) -> float:
    return float("nan") if value is None else float(value)
