"""KV-track cells: score with its episode-bootstrap interval, costs, and their ratios to `full` on shared items.

A cell is cachebench.cells.IDENTITY (and the task's family, for pages); its rows are the `items` view, each item
once. A method is compared with the `full` cell of the same task, model, weights, dtype, mode, compression and
context length, item by item: only the items both scored count, so a run that stopped early or failed on some
turns is not compared with a baseline's easier or harder remainder. `perf` rows (timings without a score) are
cells of their own track: every error-free row counts, their score is NaN.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import duckdb
import numpy as np

from cachebench.cells import IDENTITY, ITEM, cluster_sql
from cachebench.leaderboard.cells import KVCategory as CategoryScore
from cachebench.leaderboard.cells import KVCell
from cachebench.leaderboard.queries import provenance
from cachebench.resultdb import SOURCE, number_cells, per_cell, text_keys
from cachebench.stats import cluster_intervals

KEY = ("family", *IDENTITY)
BASELINE = "full"
_VIEW = "kv_rows"
_FINITE_SCORE = "score IS NOT NULL AND isfinite(score)"
# the items of the KV and perf tracks, with `ok` (scored: a perf row needs no score) and `scored`
_SELECT = f"""
    SELECT {text_keys(KEY)}, {", ".join(ITEM)}, run_id, score, hardware, cachebench_version, git_sha, created_at,
           run_complete, method_params, {SOURCE}, kv_bytes, reused_tokens, category, exact_match,
           CASE WHEN isfinite(ttft_ms) THEN ttft_ms END AS ttft_ms,
           CASE WHEN isfinite(request_ttft_ms) THEN request_ttft_ms END AS request_ttft,
           CASE WHEN isfinite(decode_ms_per_token) THEN decode_ms_per_token END AS decode_ms,
           error IS NULL AND (track = 'perf' OR ({_FINITE_SCORE})) AS ok,
           error IS NULL AND {_FINITE_SCORE} AS scored
    FROM (SELECT *, split_part(task, '.', 1) AS family FROM {{rows}} WHERE track IS DISTINCT FROM 'semantic')"""
_SUMMARY = per_cell(_VIEW, KEY, """count(*) FILTER (WHERE ok), count(*) FILTER (WHERE NOT ok),
    avg(kv_bytes) FILTER (WHERE ok), avg(request_ttft) FILTER (WHERE ok), avg(ttft_ms) FILTER (WHERE ok),
    avg(decode_ms) FILTER (WHERE ok), bool_or(coalesce(reused_tokens, 0) > 0)""")
# one entry per cluster (cachebench.cells.cluster_sql), sorted as np.unique sorts those labels
_CLUSTERS = per_cell(_VIEW, KEY, "sum(score) AS total, count(*) AS size", where="scored",
                     by=f", {cluster_sql()} AS cluster", order="ORDER BY k.cell, g.cluster")
_GROUP = ("track", "task", "model", "model_weights", "dtype", "mode", "compression", "context_length")
_BOTH_KV = "i.kv IS NOT NULL AND b.kv IS NOT NULL"
_BOTH_TTFT = "i.ttft IS NOT NULL AND b.ttft IS NOT NULL"
# per cell: matched items, then the ratios of sums over items where both sides have the value (a ratio of means
# over the same items)
_RATIOS = f"""
    WITH items AS (SELECT {", ".join(KEY)}, {", ".join(ITEM)}, kv_bytes AS kv, request_ttft AS ttft
                   FROM {_VIEW} WHERE ok),
    base AS (SELECT {", ".join(_GROUP)}, {", ".join(ITEM)}, kv, ttft FROM items WHERE method = '{BASELINE}'),
    matched AS (
        SELECT {", ".join("i." + column for column in KEY)}, count(*) AS matched,
               sum(i.kv) FILTER (WHERE {_BOTH_KV}) / nullif(sum(b.kv) FILTER (WHERE {_BOTH_KV}), 0) AS kv_ratio,
               sum(i.ttft) FILTER (WHERE {_BOTH_TTFT}) / nullif(sum(b.ttft) FILTER (WHERE {_BOTH_TTFT}), 0)
                   AS ttft_ratio
        FROM items i JOIN base b ON {" AND ".join(f"i.{c} IS NOT DISTINCT FROM b.{c}" for c in (*_GROUP, *ITEM))}
        GROUP BY ALL)
    SELECT k.cell, m.matched, m.kv_ratio, m.ttft_ratio FROM matched m JOIN {_VIEW}_keys k USING ({", ".join(KEY)})"""
# per (cell, category) of tasks whose items have two or more categories: one entry per cluster, with exact match
_CATEGORIES = f"""
    WITH several AS (SELECT task FROM {_VIEW} WHERE category <> '' AND scored GROUP BY task
                     HAVING count(DISTINCT category) > 1)
    SELECT k.cell, g.category, g.cluster, g.total, g.size, g.em_total, g.em_size FROM (
        SELECT {", ".join(KEY)}, category, {cluster_sql()} AS cluster, sum(score) AS total, count(*) AS size,
               sum(exact_match) AS em_total, count(exact_match) AS em_size
        FROM {_VIEW} WHERE scored AND task IN (SELECT task FROM several) GROUP BY ALL) g
    JOIN {_VIEW}_keys k USING ({", ".join(KEY)})
    ORDER BY k.cell, g.category, g.cluster"""
def kv_cells(connection: duckdb.DuckDBPyConnection, files: list[Path]) -> list[KVCell]:
    """Every KV cell of the `results` view on `connection`, Pareto flags set."""
    keys = number_cells(connection, _VIEW, _SELECT, KEY)
    if not keys:
        return []
    count = len(keys)
    summary = _by_cell(connection, count, _SUMMARY, [0, 0, np.nan, np.nan, np.nan, np.nan, False])
    mean, low, high = _score_intervals(connection, count)
    ratios = _by_cell(connection, count, _RATIOS, [0, np.nan, np.nan])
    categories = _categories(connection)
    cells = []
    for i, (key, origin) in enumerate(zip(keys, provenance(connection, _VIEW, KEY, files), strict=True)):
        fields = dict(zip(KEY, key, strict=True))
        fields["method_params"] = fields.pop("cell_params")
        context = fields.pop("context_length")
        cells.append(KVCell(
            **fields, context_length=int(context) if context else None, score=float(mean[i]), low=float(low[i]),
            high=float(high[i]), n=int(summary[i][0]), errors=int(summary[i][1]), kv_bytes=_float(summary[i][2]),
            request_ttft_ms=_float(summary[i][3]), question_ttft_ms=_float(summary[i][4]),
            decode_ms=_float(summary[i][5]),
            reused=bool(summary[i][6]), matched=int(ratios[i][0]), kv_ratio=_float(ratios[i][1]),
            ttft_ratio=_float(ratios[i][2]), provenance=origin, categories=categories.get(i, [])))
    _mark_pareto(cells)
    return cells


def _by_cell(connection: duckdb.DuckDBPyConnection, count: int, query: str, empty: list) -> list[list]:
    """The query's columns after `cell`, indexed by cell; `empty` for cells it returned nothing for."""
    out = [list(empty) for _ in range(count)]
    for cell, *values in connection.execute(query).fetchall():
        out[cell] = values
    return out


def _score_intervals(connection: duckdb.DuckDBPyConnection, count: int) -> tuple[np.ndarray, ...]:
    """Mean score and its 95% interval per cell, clusters (episodes) resampled (cachebench.stats)."""
    clusters = connection.execute(_CLUSTERS).fetchnumpy()
    return cluster_intervals(np.asarray(clusters["cell"], dtype=np.int64), np.asarray(clusters["total"], dtype=float),
                             np.asarray(clusters["size"], dtype=float), count)


def _categories(connection: duckdb.DuckDBPyConnection) -> dict[int, list[CategoryScore]]:
    """Per cell, its score (with interval) and exact match by category, for tasks with several categories."""
    found = connection.execute(_CATEGORIES).fetchnumpy()
    if not len(found["cell"]):
        return {}
    pairs = list(zip(found["cell"].tolist(), found["category"].tolist(), strict=True))
    groups = {pair: index for index, pair in enumerate(dict.fromkeys(pairs))}
    group = np.array([groups[pair] for pair in pairs], dtype=np.int64)
    mean, low, high = cluster_intervals(group, np.asarray(found["total"], dtype=float),
                                        np.asarray(found["size"], dtype=float), len(groups))
    em_total = np.bincount(group, weights=np.nan_to_num(np.asarray(found["em_total"], dtype=float)),
                           minlength=len(groups))
    em_size = np.bincount(group, weights=np.asarray(found["em_size"], dtype=float), minlength=len(groups))
    size = np.bincount(group, weights=np.asarray(found["size"], dtype=float), minlength=len(groups))
    out: dict[int, list[CategoryScore]] = defaultdict(list)
    for (cell, category), index in groups.items():
        em = em_total[index] / em_size[index] if em_size[index] else float("nan")
        out[cell].append(CategoryScore(category, float(mean[index]), float(low[index]), float(high[index]),
                                       int(size[index]), float(em)))
    return out


def _float(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Which (cost, quality) points no other point beats: no more cost and no less quality, better in one."""
    flags = []
    for cost, quality in points:
        beaten = any(c <= cost and q >= quality and (c < cost or q > quality) for c, q in points)
        flags.append(not beaten)
    return flags


def _mark_pareto(cells: list[KVCell]) -> None:
    """Flag the cells on each group's quality-versus-KV-memory front (random weights and missing values left out)."""
    groups: dict[tuple[str, ...], list[KVCell]] = defaultdict(list)
    for cell in cells:
        if not cell.random_weights and np.isfinite(cell.score) and np.isfinite(cell.kv_ratio):
            groups[cell.group].append(cell)
    for members in groups.values():
        for cell, front in zip(members, pareto_front([(c.kv_ratio, c.score) for c in members]), strict=True):
            cell.pareto = front
