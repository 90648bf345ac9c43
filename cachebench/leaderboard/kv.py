"""KV-track cells: score with its episode-bootstrap interval, costs, and their ratios to `full` on shared items.

A cell is (task family, task, method, method_params, model, mode, compression), as in `cachebench show`. A method
is compared with the `full` rows of the same task, model, mode and compression, item by item: only the
(episode_id, turn) pairs both scored count, so a run that stopped early or failed on some turns is not
compared with a baseline's easier or harder remainder.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import duckdb
import numpy as np

from cachebench.leaderboard.bootstrap import cluster_intervals
from cachebench.leaderboard.cells import KVCell
from cachebench.leaderboard.load import ROWS, SOURCE
from cachebench.leaderboard.queries import number_cells, per_cell, provenance, text_keys
from cachebench.taskspec import SEMANTIC_METRIC

KEY = ("family", "task", "method", "method_params", "model", "mode", "compression")
BASELINE = "full"
_VIEW = "kv_rows"
# the rows of the KV track, with `ok` (scored) and the request's time to first token (cachebench.show.request_ttft)
_SELECT = f"""
    SELECT {text_keys(KEY)}, run_id, episode_id, turn, score, model_weights, hardware, cachebench_version, git_sha,
           created_at, run_complete, {SOURCE}, kv_bytes, reused_tokens,
           error IS NULL AND score IS NOT NULL AND NOT isnan(score) AS ok,
           CASE WHEN isfinite(request_ttft) THEN request_ttft END AS request_ttft
    FROM (SELECT *, split_part(task, '.', 1) AS family,
                 CASE WHEN mode = 'multi-request' OR turn = 0 THEN ttft_ms + prefill_ms ELSE ttft_ms END
                     AS request_ttft
          FROM {ROWS} WHERE metric IS DISTINCT FROM '{SEMANTIC_METRIC}')"""
_SUMMARY = per_cell(_VIEW, KEY, """count(*) FILTER (WHERE ok), count(*) FILTER (WHERE NOT ok),
    avg(kv_bytes) FILTER (WHERE ok), avg(request_ttft) FILTER (WHERE ok), bool_or(model_weights = 'random'),
    bool_or(coalesce(reused_tokens, 0) > 0)""")
# one entry per episode of a run (cachebench.show's cluster), sorted as np.unique sorts those labels
_CLUSTERS = per_cell(_VIEW, KEY, "sum(score) AS total, count(*) AS size", where="ok",
                     by=", coalesce(run_id, 'None') || '/' || coalesce(episode_id, 'None') AS cluster",
                     order="ORDER BY k.cell, g.cluster")
# per cell: matched items, then the ratios of sums over items where both sides have the value (a ratio of means
# over the same items); an item run several times counts once, with its mean
_BOTH_KV = "i.kv IS NOT NULL AND b.kv IS NOT NULL"
_BOTH_TTFT = "i.ttft IS NOT NULL AND b.ttft IS NOT NULL"
_RATIOS = f"""
    WITH items AS (
        SELECT {", ".join(KEY)}, episode_id, turn, avg(kv_bytes) AS kv, avg(request_ttft) AS ttft
        FROM {_VIEW} WHERE ok GROUP BY ALL),
    base AS (
        SELECT task, model, mode, compression, episode_id, turn, avg(kv) AS kv, avg(ttft) AS ttft
        FROM items WHERE method = '{BASELINE}' GROUP BY ALL),
    matched AS (
        SELECT {", ".join("i." + column for column in KEY)}, count(*) AS matched,
               sum(i.kv) FILTER (WHERE {_BOTH_KV}) / nullif(sum(b.kv) FILTER (WHERE {_BOTH_KV}), 0) AS kv_ratio,
               sum(i.ttft) FILTER (WHERE {_BOTH_TTFT}) / nullif(sum(b.ttft) FILTER (WHERE {_BOTH_TTFT}), 0)
                   AS ttft_ratio
        FROM items i JOIN base b USING (task, model, mode, compression, episode_id, turn) GROUP BY ALL)
    SELECT k.cell, m.matched, m.kv_ratio, m.ttft_ratio FROM matched m JOIN {_VIEW}_keys k USING ({", ".join(KEY)})"""


def kv_cells(connection: duckdb.DuckDBPyConnection, files: list[Path]) -> list[KVCell]:
    """Every KV cell of the `results` view on `connection`, Pareto flags set."""
    keys = number_cells(connection, _VIEW, _SELECT, KEY)
    if not keys:
        return []
    count = len(keys)
    summary = _by_cell(connection, count, _SUMMARY, [0, 0, np.nan, np.nan, False, False])
    mean, low, high = _score_intervals(connection, count)
    ratios = _by_cell(connection, count, _RATIOS, [0, np.nan, np.nan])
    cells = [
        KVCell(**dict(zip(KEY, key, strict=True)), score=float(mean[i]), low=float(low[i]), high=float(high[i]),
               n=int(summary[i][0]), errors=int(summary[i][1]), kv_bytes=_float(summary[i][2]),
               request_ttft_ms=_float(summary[i][3]), random_weights=bool(summary[i][4]),
               reused=bool(summary[i][5]), matched=int(ratios[i][0]), kv_ratio=_float(ratios[i][1]),
               ttft_ratio=_float(ratios[i][2]), provenance=origin)
        for i, (key, origin) in enumerate(zip(keys, provenance(connection, _VIEW, KEY, files), strict=True))
    ]
    _mark_pareto(cells)
    return cells


def _by_cell(connection: duckdb.DuckDBPyConnection, count: int, query: str, empty: list) -> list[list]:
    """The query's columns after `cell`, indexed by cell; `empty` for cells it returned nothing for."""
    out = [list(empty) for _ in range(count)]
    for cell, *values in connection.execute(query).fetchall():
        out[cell] = values
    return out


def _score_intervals(connection: duckdb.DuckDBPyConnection, count: int) -> tuple[np.ndarray, ...]:
    """Mean score and its 95% interval per cell, episodes (per run) resampled as cachebench.show does."""
    clusters = connection.execute(_CLUSTERS).fetchnumpy()
    return cluster_intervals(np.asarray(clusters["cell"], dtype=np.int64), np.asarray(clusters["total"], dtype=float),
                             np.asarray(clusters["size"], dtype=float), count)


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
