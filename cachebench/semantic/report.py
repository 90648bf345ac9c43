"""`cachebench show` for semantic rows: one table per task, a row per method setting and category, and the
hit-rate-versus-error-rate trade-off of every swept method. The cells are cachebench.semantic.summary's.

Stream tasks show vCache's rates with 95% intervals (Wilson for rates, bootstrap for F1), the stale-hit rate,
lookup latency, memory per entry and the cost model (cachebench.semantic.scoring); pair tasks show one table per
pair protocol with the rates and every interval (Wilson for hit rate, error rate, precision and recall,
bootstrap for F1 and F0.5) beside the outcome counts GPTCache's benchmark prints.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from cachebench.semantic.scoring import Cost, Rates, frontier_area

ALL = "all"
MISSING = "–"


@dataclass
class CategoryScore:
    """One category of a cell, or the whole cell (category ALL): rates, their 95% intervals, lookup latency, cost."""

    category: str
    rates: Rates
    intervals: dict[str, tuple[float, float]]
    lookup_p50: float
    lookup_p95: float
    cost: Cost | None
    embed_p50: float = float("nan")  # the embedding time charged per request (online: measured per request)
    embed_p95: float = float("nan")


@dataclass
class SemanticCell:
    """A semantic cell: `key` holds its identity (cachebench.cells.IDENTITY, and method_params = cell_params)."""

    key: dict[str, str]
    categories: list[CategoryScore] = field(default_factory=list)
    bytes_per_entry: float = float("nan")
    errors: int = 0
    partial: bool = False  # some rows come from a run that did not finish (resultdb.partial_runs)

    @property
    def label(self) -> str:
        """The method as tables name it, marked when a run behind it did not finish."""
        return self.key["method"] + (" (partial)" if self.partial else "")


def short_params(method: str, params_json: str) -> str:
    """The parameters that differ from the method's defaults, as name=value (the full JSON is in the rows); the
    defaults come from the method manifest, so no method (and no torch) is imported to print a table."""
    from cachebench.method_manifest import METHODS, effective_defaults

    try:
        values = json.loads(params_json)
    except (TypeError, ValueError):
        values = None
    if method not in METHODS or not isinstance(values, dict):  # a method this version does not know: as written
        return params_json
    defaults = json.loads(json.dumps(effective_defaults(method)))
    changed = [f"{k}={v}" for k, v in sorted(values.items()) if k not in defaults or defaults[k] != v]
    return " ".join(changed) or "defaults"


def _pct(value: float) -> str:
    return MISSING if value is None or np.isnan(value) else f"{100 * value:.1f}"


def _num(value: float, digits: int = 2) -> str:
    return MISSING if value is None or np.isnan(value) else f"{value:.{digits}f}"


def _interval(intervals: dict[str, tuple[float, float]], name: str, scale: float = 100.0) -> str:
    """The interval's bounds, or – where there is none (fewer than two requests)."""
    if name not in intervals:
        return MISSING
    low, high = intervals[name]
    digits = 1 if scale == 100.0 else 2
    return f"{scale * low:.{digits}f}–{scale * high:.{digits}f}"


def _break_even(cost: Cost | None) -> str:
    if cost is None:
        return MISSING
    return "never" if np.isinf(cost.break_even) else f"{100 * cost.break_even:.1f}%"


@dataclass
class Section:
    """One table as every `show` format prints it: plain strings, the first `left` columns left-aligned."""

    title: str
    headers: tuple[str, ...]
    rows: list[tuple[str, ...]] = field(default_factory=list)
    left: int = 1


def semantic_sections(cells: list[SemanticCell]) -> list[Section]:
    """Per task: the quality and cost tables of a stream task (or the pair table of a pair task), then the
    trade-off of every swept method. Plain strings: `show` prints them as a terminal table, Markdown or text."""
    by_task: dict[tuple[str, str], list[SemanticCell]] = defaultdict(list)
    for cell in cells:  # the two pair protocols are different cells of one task: a table each
        by_task[cell.key["task"], cell.key["mode"]].append(cell)
    out: list[Section] = []
    for (task, mode), task_cells in by_task.items():
        models = {_model(cell) for cell in task_cells}
        named = len(models) > 1  # several models (or dtypes): a column says which, else the titles do
        suffix = "" if named else f" — {models.pop()}"
        found = _pairs(task, mode, task_cells, named) if mode.startswith("pair") else _stream(task, task_cells, named)
        found += _tradeoff(task if mode == "stream" else f"{task} ({mode})", task_cells)
        for section in found:
            section.title += suffix
        out += found
    return out


def _model(cell: SemanticCell) -> str:
    """The embedder a cell ran with, and its dtype where one is recorded."""
    dtype = cell.key.get("dtype")
    return cell.key["model"] + (f" ({dtype})" if dtype else "")


def _lead(cell: SemanticCell, named: bool) -> tuple[str, ...]:
    params = short_params(cell.key["method"], cell.key["method_params"])
    return (cell.label, params, _model(cell)) if named else (cell.label, params)


def _stream(title: str, cells: list[SemanticCell], named: bool) -> list[Section]:
    lead = ("method", "params", "model") if named else ("method", "params")
    quality = Section(f"{title} (stream): quality, warm-up excluded", (*lead, "category", "n", "hit %",
                        "hit 95% CI", "err %", "err 95% CI", "prec", "recall", "F1", "F1 95% CI", "F0.5", "stale %",
                        "errors"), [], len(lead) + 1)
    cost = Section(f"{title} (stream): cost (L = embedding + lookup; C = LLM; h* = break-even hit rate)",
                     (*lead, "category", "embed p50 ms", "p95 ms", "lookup p50 ms", "p95 ms", "fetch p50 ms",
                      "bytes/entry", "L ms", "C ms",
                      "h*", "saving % of C"), [], len(lead) + 1)
    for cell in cells:
        for score in cell.categories:
            r, c = score.rates, score.cost
            overall = score.category == ALL or len(cell.categories) == 1
            quality.rows.append((
                *_lead(cell, named), score.category, str(r.n), _pct(r.hit_rate), _interval(score.intervals, "hit_rate"),
                _pct(r.error_rate), _interval(score.intervals, "error_rate"), _num(r.precision), _num(r.recall),
                _num(r.f1), _interval(score.intervals, "f1", scale=1.0), _num(r.f05), _pct(r.stale_rate),
                str(cell.errors) if overall else "",
            ))  # fmt: skip
            cost.rows.append((
                *_lead(cell, named), score.category, _num(score.embed_p50), _num(score.embed_p95),
                _num(score.lookup_p50, 3), _num(score.lookup_p95, 3),
                _num(c.fetch_ms, 3) if c else MISSING, _num(cell.bytes_per_entry, 0) if overall else "",
                _num(c.overhead_ms) if c else MISSING, _num(c.llm_ms, 0) if c else MISSING, _break_even(c),
                _pct(c.saving_share) if c else MISSING,
            ))  # fmt: skip
    return [quality, cost]


PAIR_TITLES = {
    "pair-retrieval": "pairs, retrieval: every first item inserted, every second looked up against all",
    "pair-pairwise": "pairs, pairwise: each pair on its own",
    "pair": "pairs: insert first, query second",  # files written before the protocols had names
}


def _pairs(title: str, mode: str, cells: list[SemanticCell], named: bool) -> list[Section]:
    """Two tables: the rates with their intervals, and the outcome counts GPTCache's benchmark prints."""
    lead = ("method", "params", "model") if named else ("method", "params")
    protocol = PAIR_TITLES.get(mode, mode)
    quality = Section(f"{title} ({protocol}): quality", (*lead, "category", "pairs", "hit %", "hit 95% CI", "err %",
                      "err 95% CI", "prec", "prec 95% CI", "recall", "recall 95% CI", "F1", "F1 95% CI", "F0.5",
                      "F0.5 95% CI"), [], len(lead) + 1)
    counts = Section(f"{title} ({protocol}): outcomes", (*lead, "category", "TP", "FP", "FN", "TN", "lookup p50 ms",
                     "embed p50 ms", "errors"), [], len(lead) + 1)
    for cell in cells:
        for score in cell.categories:
            r, found = score.rates, score.intervals
            quality.rows.append((
                *_lead(cell, named), score.category, str(r.n), _pct(r.hit_rate), _interval(found, "hit_rate"),
                _pct(r.error_rate), _interval(found, "error_rate"), _num(r.precision),
                _interval(found, "precision", scale=1.0), _num(r.recall), _interval(found, "recall", scale=1.0),
                _num(r.f1), _interval(found, "f1", scale=1.0), _num(r.f05), _interval(found, "f05", scale=1.0),
            ))  # fmt: skip
            counts.rows.append((
                *_lead(cell, named), score.category, str(r.tp), str(r.fp), str(r.fn), str(r.tn),
                _num(score.lookup_p50, 3), _num(score.embed_p50), str(cell.errors),
            ))  # fmt: skip
    return [quality, counts]


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


def _tradeoff(title: str, cells: list[SemanticCell]) -> list[Section]:
    curves = tradeoff(cells)
    if not curves:
        return []
    largest = max(e for found, _ in curves.values() for e, _ in found)
    rows = [(method, str(len(found)), _num(area, 3), "  ".join(f"({100 * e:.1f}, {100 * h:.1f})" for e, h in found))
            for method, (found, area) in sorted(curves.items())]
    return [Section(f"{title}: hit rate vs error rate over each method's settings (area up to {100 * largest:.1f}% "
                    "error)", ("method", "settings", "area", "points (err %, hit %)"), rows, 4)]
