"""`cachebench show` for semantic rows: one table per task, a row per method setting and category, and the
hit-rate-versus-error-rate trade-off of every swept method.

Stream tasks show vCache's rates with 95% bootstrap intervals, the stale-hit rate, lookup latency, memory per
entry and the cost model (cachebench.semantic.scoring); pair tasks show what GPTCache's benchmark prints:
positives (correct hits), wrong hits and misses.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cachebench.semantic.scoring import Cost, Rates, bootstrap_intervals, cost_model, frontier_area, rates

_KEY = ("task", "method", "method_params", "model", "mode")
ALL = "all"
_COLUMNS = ("outcome", "stale", "warmup", "error", "category", "lookup_ms", "fetch_ms", "embed_ms", "llm_ms",
            "cache_entries", "cache_bytes", "turn", "run_complete", *_KEY)


@dataclass
class CategoryScore:
    category: str
    rates: Rates
    intervals: dict[str, tuple[float, float]]
    lookup_p50: float
    lookup_p95: float
    cost: Cost | None


@dataclass
class SemanticCell:
    key: dict[str, str]
    categories: list[CategoryScore] = field(default_factory=list)
    bytes_per_entry: float = float("nan")
    errors: int = 0
    partial: bool = False  # some rows come from a run that did not finish (results.partial_runs)

    @property
    def label(self) -> str:
        """The method as tables name it, marked when a run behind it did not finish."""
        return self.key["method"] + (" (partial)" if self.partial else "")


def _percentile(values: list[float], q: float) -> float:
    finite = [v for v in values if v is not None and not np.isnan(v)]
    return float(np.percentile(finite, q)) if finite else float("nan")


def _mean(values: list[Any]) -> float:
    finite = [v for v in values if v is not None and not np.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _score(category: str, rows: list[int], data: dict[str, list[Any]], fetch_ms: float,
           penalty_ms: float | None) -> CategoryScore:
    outcomes = [data["outcome"][r] for r in rows]
    judged = rates(outcomes, [bool(data["stale"][r]) for r in rows])
    lookups = [data["lookup_ms"][r] for r in rows]
    llm = _mean([data["llm_ms"][r] for r in rows])
    cost = None
    if not np.isnan(llm):
        overhead = _mean([(data["embed_ms"][r] or 0.0) + data["lookup_ms"][r] for r in rows])
        hits = judged.tp + judged.fp
        cost = cost_model(judged.hit_rate, judged.fp + judged.stale, hits, overhead,
                          0.0 if np.isnan(fetch_ms) else fetch_ms, llm, penalty_ms)
    return CategoryScore(category, judged, bootstrap_intervals(outcomes), _percentile(lookups, 50),
                         _percentile(lookups, 95), cost)


def summarize_semantic(table: pa.Table, penalty_ms: float | None = None) -> list[SemanticCell]:
    """Cells of (task, method, params, embedder, protocol), each scored per category and overall."""
    data = table.select(list(_COLUMNS)).to_pydict()
    groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for row in range(table.num_rows):
        groups[tuple(data[k][row] for k in _KEY)].append(row)
    cells = []
    for key, members in sorted(groups.items(), key=lambda item: tuple(str(v) for v in item[0])):
        cell = SemanticCell(key=dict(zip(_KEY, key, strict=True)))
        scored = [r for r in members if data["error"][r] is None and not data["warmup"][r] and data["outcome"][r]]
        cell.errors = sum(data["error"][r] is not None for r in members)
        cell.partial = any(data["run_complete"][r] is False for r in members)
        last = max(members, key=lambda r: data["turn"][r])
        if data["cache_entries"][last]:
            cell.bytes_per_entry = data["cache_bytes"][last] / data["cache_entries"][last]
        fetch_ms = _percentile([data["fetch_ms"][r] for r in scored], 50)
        by_category: dict[str, list[int]] = defaultdict(list)
        for r in scored:
            by_category[data["category"][r]].append(r)
        for category in sorted(by_category):
            cell.categories.append(_score(category, by_category[category], data, fetch_ms, penalty_ms))
        if len(by_category) > 1 or not by_category:
            cell.categories.append(_score(ALL, scored, data, fetch_ms, penalty_ms))
        cells.append(cell)
    return cells


def short_params(method: str, params_json: str) -> str:
    """The parameters that differ from the method's defaults, as name=value (the full JSON is in the rows)."""
    try:
        from cachebench.params import canonical_json
        from cachebench.registry import build_method

        defaults = json.loads(canonical_json(build_method(method, []).params))
        values = json.loads(params_json)
    except Exception:  # an unknown method (rows from another version): show what the rows say
        return params_json
    changed = [f"{k}={v}" for k, v in sorted(values.items()) if defaults.get(k) != v]
    return " ".join(changed) or "defaults"


def _pct(value: float) -> str:
    return "-" if value is None or np.isnan(value) else f"{100 * value:.1f}"


def _num(value: float, digits: int = 2) -> str:
    return "-" if value is None or np.isnan(value) else f"{value:.{digits}f}"


def _interval(intervals: dict[str, tuple[float, float]], name: str, scale: float = 100.0) -> str:
    if name not in intervals:
        return "-"
    low, high = intervals[name]
    digits = 1 if scale == 100.0 else 2
    return f"{scale * low:.{digits}f}–{scale * high:.{digits}f}"


def _break_even(cost: Cost | None) -> str:
    if cost is None:
        return "-"
    return "never" if np.isinf(cost.break_even) else f"{100 * cost.break_even:.1f}%"


def render_semantic(cells: list[SemanticCell], console: Console) -> None:
    by_task: dict[str, list[SemanticCell]] = defaultdict(list)
    for cell in cells:
        by_task[cell.key["task"]].append(cell)
    for task, task_cells in by_task.items():
        if task_cells[0].key["mode"] == "pair":
            _render_pairs(task, task_cells, console)
        else:
            _render_stream(task, task_cells, console)
        _render_tradeoff(task, task_cells, console)


def _table(title: str, headers: tuple[str, ...], left: int = 3) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    for index, header in enumerate(headers):
        table.add_column(header, justify="left" if index < left else "right", overflow="fold")
    return table


def _render_stream(task: str, cells: list[SemanticCell], console: Console) -> None:
    quality = _table(f"{escape(task)} (stream): quality, warm-up excluded",
                     ("method", "params", "category", "n", "hit %", "err %", "err 95% CI", "prec", "recall", "F1",
                      "F1 95% CI", "F0.5", "stale %", "errors"))
    cost = _table(f"{escape(task)} (stream): cost (L = embedding + lookup; C = LLM; h* = break-even hit rate)",
                  ("method", "params", "category", "lookup p50 ms", "p95 ms", "fetch p50 ms", "bytes/entry", "L ms",
                   "C ms", "h*", "saving % of C"))
    for cell in cells:
        params = short_params(cell.key["method"], cell.key["method_params"])
        for score in cell.categories:
            r, c = score.rates, score.cost
            overall = score.category == ALL or len(cell.categories) == 1
            quality.add_row(*(escape(v) for v in (
                cell.label, params, score.category, str(r.n), _pct(r.hit_rate), _pct(r.error_rate),
                _interval(score.intervals, "error_rate"), _num(r.precision), _num(r.recall), _num(r.f1),
                _interval(score.intervals, "f1", scale=1.0), _num(r.f05), _pct(r.stale_rate),
                str(cell.errors) if overall else "",
            )))  # fmt: skip
            cost.add_row(*(escape(v) for v in (
                cell.label, params, score.category, _num(score.lookup_p50, 3), _num(score.lookup_p95, 3),
                _num(c.fetch_ms, 3) if c else "-", _num(cell.bytes_per_entry, 0) if overall else "",
                _num(c.overhead_ms) if c else "-", _num(c.llm_ms, 0) if c else "-", _break_even(c),
                _pct(c.saving_share) if c else "-",
            )))  # fmt: skip
    console.print(quality)
    console.print(cost)


def _render_pairs(task: str, cells: list[SemanticCell], console: Console) -> None:
    headers = ("method", "params", "category", "pairs", "positives", "wrong hits", "misses", "FN", "TN", "prec",
               "recall", "F1", "lookup p50 ms", "errors")
    table = _table(f"{escape(task)} (pairs: insert first, query second)", headers)
    for cell in cells:
        params = short_params(cell.key["method"], cell.key["method_params"])
        for score in cell.categories:
            r = score.rates
            table.add_row(*(escape(v) for v in (
                cell.label, params, score.category, str(r.n), str(r.tp), str(r.fp), str(r.fn + r.tn),
                str(r.fn), str(r.tn), _num(r.precision), _num(r.recall), _num(r.f1), _num(score.lookup_p50, 3),
                str(cell.errors),
            )))  # fmt: skip
    console.print(table)


def tradeoff(cells: list[SemanticCell]) -> dict[str, tuple[list[tuple[float, float]], float]]:
    """Per method with two or more settings on a task: its (error rate, hit rate) points and the normalised area
    under its frontier, all methods measured up to the task's largest error rate."""
    points: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for cell in cells:
        overall = cell.categories[-1].rates
        if not np.isnan(overall.hit_rate):
            points[cell.key["method"]].append((overall.error_rate, overall.hit_rate))
    largest = max((e for found in points.values() for e, _ in found), default=0.0)
    return {method: (sorted(found), frontier_area(found, largest)) for method, found in points.items()
            if len(found) > 1}


def _render_tradeoff(task: str, cells: list[SemanticCell], console: Console) -> None:
    curves = tradeoff(cells)
    if not curves:
        return
    largest = max(e for found, _ in curves.values() for e, _ in found)
    table = Table(title=f"{escape(task)}: hit rate vs error rate over each method's settings (area up to "
                        f"{100 * largest:.1f}% error)", title_justify="left", box=box.SIMPLE_HEAD)
    for header in ("method", "settings", "area", "points (err %, hit %)"):
        table.add_column(header)
    for method, (found, area) in sorted(curves.items()):
        shown = "  ".join(f"({100 * e:.1f}, {100 * h:.1f})" for e, h in found)
        table.add_row(escape(method), str(len(found)), _num(area, 3), escape(shown))
    console.print(table)
