"""Semantic-cache cells scored from the `items` view (cachebench.resultdb): the one computation behind `show`, the
leaderboard and the semantic benchmark.

A cell is cachebench.cells.IDENTITY; each request counts once (a rerun's copy of a request is not a second
request). Warm-up and failed rows are left out of the scores. Per category and overall: vCache's rates
(cachebench.semantic.scoring.rates), Wilson intervals of hit and error rate and a bootstrap interval of F1
(cachebench.stats), lookup latency percentiles and the cost model; per cell: failed rows, memory per entry at
the end of the stream, and whether a run behind it did not finish.
"""

from __future__ import annotations

from collections import defaultdict

import duckdb
import numpy as np
import pyarrow as pa

from cachebench.cells import IDENTITY
from cachebench.resultdb import number_cells, open_table, per_cell, text_keys
from cachebench.semantic.report import ALL, CategoryScore, SemanticCell
from cachebench.semantic.scoring import cost_model, rates
from cachebench.stats import f1_intervals, wilson_interval

OUTCOMES = np.array(["TP", "FP", "FN", "TN"])
VIEW = "semantic_rows"
_FINITE = "CASE WHEN isfinite({0}) THEN {0} END AS {0}"
# every column the scores and the leaderboard's provenance need, with the family a page groups tasks by
SELECT = f"""
    SELECT *, error IS NULL AND NOT coalesce(warmup, false) AND coalesce(outcome, '') <> '' AS scored,
           error IS NOT NULL AS failed
    FROM (SELECT {{keys}}, coalesce(category, '') AS category, outcome, coalesce(stale, false) AS stale,
                 {", ".join(_FINITE.format(c) for c in ("lookup_ms", "embed_ms", "fetch_ms", "llm_ms"))},
                 cache_entries, cache_bytes, turn, warmup, error, run_id, hardware, cachebench_version, git_sha,
                 created_at, run_complete, method_params, source
          FROM (SELECT *, split_part(task, '.', 1) AS family FROM {{rows}} WHERE track = 'semantic'))"""


def semantic_summary(connection: duckdb.DuckDBPyConnection, key: tuple[str, ...] = IDENTITY,
                     penalty_ms: float | None = None) -> list[SemanticCell]:
    """Every semantic cell of the `items` view on `connection`, numbered by `key` (IDENTITY, or IDENTITY after
    more grouping columns) in key order; view VIEW and table VIEW_keys are left on the connection."""
    keys = number_cells(connection, VIEW, SELECT.format(keys=text_keys(key), rows="{rows}"), key)
    if not keys:
        return []
    names = ", ".join(key)
    groups = connection.execute(f"""
        SELECT k.cell, g.* EXCLUDE ({names}) FROM (
            SELECT {names}, category, grouping(category) = 1 AS overall,
                   count(*) FILTER (WHERE outcome = 'TP'), count(*) FILTER (WHERE outcome = 'FP'),
                   count(*) FILTER (WHERE outcome = 'FN'), count(*) FILTER (WHERE outcome = 'TN'),
                   count(*) FILTER (WHERE stale), quantile_cont(lookup_ms, [0.5, 0.95]), avg(llm_ms),
                   quantile_cont(embed_ms, [0.5, 0.95]),
                   avg(coalesce(embed_ms, 0) + lookup_ms)
            FROM {VIEW} WHERE scored GROUP BY GROUPING SETS (({names}, category), ({names}))) g
        JOIN {VIEW}_keys k USING ({names})
        ORDER BY k.cell, g.overall, g.category""").fetchall()
    per = _per_cell(connection, key, len(keys))
    counts = np.array([row[3:7] for row in groups], dtype=np.int64).reshape(-1, 4)
    f1_bounds, f05_bounds = f1_intervals(counts), f1_intervals(counts, beta=0.5)
    by_category: dict[int, list[CategoryScore]] = defaultdict(list)
    overall_of: dict[int, CategoryScore] = {}
    for index, (cell, category, overall, tp, fp, fn, tn, stale, lookup, llm, embed, overhead) in enumerate(groups):
        judged = rates(np.repeat(OUTCOMES, [tp, fp, fn, tn]), np.arange(tp + fp + fn + tn) < stale)
        found = {"hit_rate": wilson_interval(tp + fp, judged.n), "error_rate": wilson_interval(fp, judged.n),
                 "precision": wilson_interval(tp, tp + fp), "recall": wilson_interval(tp, tp + fn),
                 "f1": (float(f1_bounds[index, 0]), float(f1_bounds[index, 1])),
                 "f05": (float(f05_bounds[index, 0]), float(f05_bounds[index, 1]))}
        found = {name: bounds for name, bounds in found.items() if np.isfinite(bounds).all()}
        cost = None
        if llm is not None:
            fetch = per[cell]["fetch_ms"]
            cost = cost_model(judged.hit_rate, judged.fp + judged.stale, judged.tp + judged.fp, _float(overhead),
                              0.0 if np.isnan(fetch) else fetch, float(llm), penalty_ms)
        p50, p95 = lookup if lookup is not None else (None, None)
        embed_p50, embed_p95 = embed if embed is not None else (None, None)
        score = CategoryScore(ALL if overall else category, judged, found, _float(p50), _float(p95), cost,
                              _float(embed_p50), _float(embed_p95))
        if overall:
            overall_of[cell] = score
        else:
            by_category[cell].append(score)
    cells = []
    for cell, values in enumerate(keys):
        identity = dict(zip(key, values, strict=True))
        categories = by_category[cell]
        if len(categories) != 1:  # the overall score last, unless the cell has exactly one category
            categories.append(overall_of.get(cell) or CategoryScore(ALL, rates([], []), {}, np.nan, np.nan, None))
        cells.append(SemanticCell(key={**identity, "method_params": identity["cell_params"]}, categories=categories,
                                  bytes_per_entry=per[cell]["bytes_per_entry"], errors=per[cell]["errors"],
                                  partial=per[cell]["partial"]))
    return cells


def _per_cell(connection: duckdb.DuckDBPyConnection, key: tuple[str, ...], count: int) -> list[dict]:
    """Per cell: failed rows, partial runs, median fetch time of scored requests, and bytes per entry as the
    request with the highest turn found the cache."""
    out = [{"errors": 0, "partial": False, "fetch_ms": np.nan, "bytes_per_entry": np.nan} for _ in range(count)]
    query = per_cell(VIEW, key, """count(*) FILTER (WHERE failed), coalesce(bool_or(run_complete = false), false),
        quantile_cont(fetch_ms, 0.5) FILTER (WHERE scored),
        arg_max(cache_bytes::DOUBLE / cache_entries, turn) FILTER (WHERE cache_entries > 0)""")
    for cell, errors, partial, fetch, per_entry in connection.execute(query).fetchall():
        out[cell] = {"errors": int(errors), "partial": bool(partial), "fetch_ms": _float(fetch),
                     "bytes_per_entry": _float(per_entry)}
    return out


def summarize_semantic(table: pa.Table, penalty_ms: float | None = None) -> list[SemanticCell]:
    """The semantic cells of rows held in memory (the semantic benchmark's), as `show` scores files."""
    connection = open_table(table)
    try:
        return semantic_summary(connection, penalty_ms=penalty_ms)
    finally:
        connection.close()


def _float(value: float | None) -> float:
    return float("nan") if value is None else float(value)
