"""Which charts each task gets, from its cells (cachebench.leaderboard.plots draws them).

KV tasks, per (model, mode, compression): quality against KV memory (ratio to `full`) with the Pareto front, and
quality against TTFT (ratio to `full`) where reuse methods ran. Semantic tasks, per (embedder, protocol): hit
rate against error rate over each method's settings, and per-category bars of each method's best-F1 setting.
Every point carries its 95% interval where the cell has one (KV: two episodes or more), and a method's settings
are joined into one line. Random-weight cells are left out of every quality chart: their scores mean nothing.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup

from cachebench.leaderboard.cells import Curve, KVCell, SemanticEntry
from cachebench.leaderboard.kv import BASELINE
from cachebench.leaderboard.plots import Bar, Point, Series, Style, bars, scatter
from cachebench.leaderboard.views import params_label
from cachebench.semantic.report import ALL, CategoryScore

MAX_BAR_METHODS = 10
SAME_MEMORY = 0.01  # KV ratios within this of 1 are the baseline's memory


@dataclass(frozen=True)
class Figure:
    svg: Markup
    model: str  # the filter hides the figure when another model is chosen


def _group_title(task: str, *parts: str) -> str:
    return " · ".join([task, *(p for p in parts if p)])


def kv_figures(cells: Sequence[KVCell], styles: dict[str, Style]) -> list[Figure]:
    groups: dict[tuple[str, ...], list[KVCell]] = defaultdict(list)
    for cell in cells:
        if not cell.random_weights and math.isfinite(cell.score):
            groups[cell.group].append(cell)
    figures = []
    for (task, model, mode, compression), members in sorted(groups.items()):
        title = _group_title(task, model, mode, compression)
        memory = [c for c in members if math.isfinite(c.kv_ratio)]
        if any(abs(c.kv_ratio - 1.0) > SAME_MEMORY for c in memory):  # else every point sits at 1: nothing to see
            front = [(c.kv_ratio, c.score) for c in memory if c.pareto]
            figures.append(Figure(scatter("Quality vs KV memory", title, "KV-cache bytes ÷ full's",
                                          "mean score", _series(memory, styles, "kv_ratio"), front),
                                  model))
        if any(c.reused for c in members):
            reuse = [c for c in members if (c.reused or c.method == BASELINE) and math.isfinite(c.ttft_ratio)]
            figures.append(Figure(scatter("Quality vs time to first token, reuse methods", title,
                                          "request time to first token ÷ full's", "mean score",
                                          _series(reuse, styles, "ttft_ratio")), model))
    return figures


def _series(cells: Sequence[KVCell], styles: dict[str, Style], x: str) -> list[Series]:
    by_method: dict[str, Series] = {}
    for cell in cells:
        entry = by_method.setdefault(cell.method, Series(cell.method, styles[cell.method]))
        value = getattr(cell, x)
        spread = f" [{cell.low:.3f}, {cell.high:.3f}]" if math.isfinite(cell.low) and math.isfinite(cell.high) else ""
        entry.points.append(Point(value, cell.score, f"{cell.method} {params_label(cell.method, cell.method_params)}:"
                                                     f" score {cell.score:.3f}{spread}, ×full {value:.2f}",
                                  y_interval=(cell.low, cell.high)))
    return [by_method[name] for name in sorted(by_method)]


def semantic_figures(entries: Sequence[SemanticEntry], curves: dict[tuple[str, str, str], dict[str, Curve]],
                     styles: dict[str, Style]) -> list[Figure]:
    groups: dict[tuple[str, str, str], list[SemanticEntry]] = defaultdict(list)
    for entry in entries:
        groups[entry.group].append(entry)
    figures = []
    for group, members in sorted(groups.items()):
        task, model, mode = group
        title = _group_title(task, model, mode)
        swept = curves.get(group, {})
        series: dict[str, Series] = {}
        for entry in members:
            method, rates, intervals = entry.cell.key["method"], entry.overall.rates, entry.overall.intervals
            if not (math.isfinite(rates.hit_rate) and math.isfinite(rates.error_rate)):
                continue
            label = f"{method} (area {swept[method][1]:.3f})" if method in swept else method
            line = series.setdefault(method, Series(label, styles[method]))
            line.points.append(Point(rates.error_rate, rates.hit_rate,
                                     f"{method} {params_label(method, entry.cell.key['method_params'])}: hit "
                                     f"{100 * rates.hit_rate:.1f}%, error {100 * rates.error_rate:.1f}%",
                                     x_interval=intervals.get("error_rate"), y_interval=intervals.get("hit_rate")))
        if series:
            figures.append(Figure(scatter("Hit rate vs error rate over settings", title, "error rate (false hits)",
                                          "hit rate",
                                          [series[m] for m in sorted(series)], percent_x=True, percent_y=True,
                                          x_range=(0.0, 1.0), y_range=(0.0, 1.0)),
                                  model))
        categories = sorted({s.category for e in members for s in e.cell.categories if s.category != ALL})
        if len(categories) > 1:
            figures.append(Figure(_category_bars(title, categories, members, styles), model))
    return figures


def _bar(label: str, score: CategoryScore) -> Bar:
    rates = score.rates
    return Bar(rates.hit_rate, rates.error_rate, f"{label}: hit {100 * rates.hit_rate:.1f}%, error "
                                                 f"{100 * rates.error_rate:.1f}%, n {rates.n}",
               score.intervals.get("hit_rate"))


def _category_bars(title: str, categories: list[str], members: Sequence[SemanticEntry], styles: dict[str, Style]
                   ) -> Markup:
    """Hit rate per category of each method's best setting (highest overall F1), wrong hits drawn darker."""
    best: dict[str, SemanticEntry] = {}
    for entry in members:
        method, f1 = entry.cell.key["method"], entry.overall.rates.f1
        held = best.get(method)
        if math.isfinite(f1) and (held is None or f1 > held.overall.rates.f1):
            best[method] = entry
    rows = []
    for method in sorted(best)[:MAX_BAR_METHODS]:
        entry = best[method]
        by_name = {s.category: s for s in entry.cell.categories}
        params = params_label(method, entry.cell.key["method_params"])
        row = [_bar(f"{method} {params}, {name}", by_name[name]) if name in by_name else None for name in categories]
        rows.append((Series(method, styles[method]), row))
    return bars("Hit rate per category, each method's best-F1 setting", title, "category", "hit rate",
                categories, rows, "wrong hits (error rate)")
