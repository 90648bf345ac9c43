"""The headline table of a task family: one row per task and model, with the best settings the cells show."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence

from cachebench.leaderboard.cells import Curve, KVCell, SemanticEntry
from cachebench.leaderboard.kv import BASELINE
from cachebench.leaderboard.views import MISSING, Column, Row, TableView, Value, count, number, params_label, text

KEEP = 0.95  # "keeps quality": a score of at least this share of full's
MAX_ERROR = 0.01  # the error budget of the semantic headline hit rate

KV_OVERVIEW = [
    Column("task"), Column("model"), Column("mode"), Column("cells", True), Column("rows", True),
    Column("methods", True), Column("full score", True),
    Column("best score", True, "the highest mean score of any setting"),
    Column("smallest KV ×full", True, f"the least KV memory of a setting scoring ≥ {KEEP:.0%} of full"),
    Column("lowest TTFT ×full", True, f"the fastest first token of a setting scoring ≥ {KEEP:.0%} of full"),
]
SEMANTIC_OVERVIEW = [
    Column("task"), Column("embedder"), Column("protocol"), Column("cells", True), Column("rows", True),
    Column("methods", True), Column("best F1", True),
    Column(f"best hit % at ≤ {MAX_ERROR:.0%} error", True, f"the highest hit rate of a setting with at most "
                                                           f"{MAX_ERROR:.0%} false hits"),
    Column("best frontier area", True, "area under a method's hit-rate-versus-error-rate sweep (1 is ideal)"),
]


def _pick(value: float, label: str, digits: int = 2, scale: float = 1.0) -> Value:
    if not math.isfinite(value):
        return Value(MISSING)
    return Value(f"{scale * value:.{digits}f} — {label}", repr(float(value)), label, "pick")  # may wrap


def _best(cells: Sequence, measure: Callable, lowest: bool = False):
    finite = [c for c in cells if math.isfinite(measure(c))]
    if not finite:
        return None
    return (min if lowest else max)(finite, key=measure)


def _kv_label(cell: KVCell) -> str:
    return f"{cell.method} {params_label(cell.method, cell.method_params)}"


def _semantic_label(entry: SemanticEntry) -> str:
    method = entry.cell.key["method"]
    return f"{method} {params_label(method, entry.cell.key['method_params'])}"


def kv_overview(cells: Sequence[KVCell]) -> TableView:
    groups: dict[tuple[str, ...], list[KVCell]] = defaultdict(list)
    for cell in cells:
        groups[cell.group].append(cell)
    table = TableView(KV_OVERVIEW)
    for (task, model, mode, _), members in sorted(groups.items()):
        rows = sum(c.provenance.rows for c in members)
        quality = [c for c in members if not c.random_weights]
        full = next((c for c in quality if c.method == BASELINE and math.isfinite(c.score)), None)
        best = _best(quality, lambda c: c.score)
        keeping = [c for c in quality if full is not None and c.score >= KEEP * full.score]
        small = _best(keeping, lambda c: c.kv_ratio, lowest=True)
        fast = _best(keeping, lambda c: c.ttft_ratio, lowest=True)
        random_note = " (random weights)" if not quality else ""
        table.rows.append(Row(task, model, [
            text(task), text(model + random_note), text(mode), count(len(members)), count(rows),
            count(len({c.method for c in members})), number(full.score if full else math.nan),
            _pick(best.score, _kv_label(best), 3) if best else Value(MISSING),
            _pick(small.kv_ratio, _kv_label(small)) if small else Value(MISSING),
            _pick(fast.ttft_ratio, _kv_label(fast)) if fast else Value(MISSING),
        ]))
    return table


def semantic_overview(entries: Sequence[SemanticEntry], curves: dict[tuple[str, str, str], dict[str, Curve]]
                      ) -> TableView:
    groups: dict[tuple[str, str, str], list[SemanticEntry]] = defaultdict(list)
    for entry in entries:
        groups[entry.group].append(entry)
    table = TableView(SEMANTIC_OVERVIEW)
    for group, members in sorted(groups.items()):
        task, model, mode = group
        best_f1 = _best(members, lambda e: e.overall.rates.f1)
        within = [e for e in members if e.overall.rates.error_rate <= MAX_ERROR]
        best_hit = _best(within, lambda e: e.overall.rates.hit_rate)
        areas = {method: area for method, (_, area) in curves.get(group, {}).items() if math.isfinite(area)}
        best_area = max(areas, key=areas.__getitem__) if areas else None
        table.rows.append(Row(task, model, [
            text(task), text(model), text(mode), count(len(members)), count(sum(e.provenance.rows for e in members)),
            count(len({e.cell.key["method"] for e in members})),
            _pick(best_f1.overall.rates.f1, _semantic_label(best_f1)) if best_f1 else Value(MISSING),
            _pick(best_hit.overall.rates.hit_rate, _semantic_label(best_hit), 1, 100) if best_hit else Value(MISSING),
            _pick(areas[best_area], best_area, 3) if best_area else Value(MISSING),
        ]))
    return table
