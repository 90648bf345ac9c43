"""Leaderboard cells as table rows the template renders as they are: display text, a sort key per column, and a
provenance block per row. Strings stay plain here; the template's autoescaping makes them safe."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from urllib.parse import quote

from cachebench.leaderboard.cells import KVCell, Provenance, SemanticEntry
from cachebench.semantic.report import ALL, CategoryScore, short_params

RUN_IDS_SHOWN = 10
MISSING = "–"


@dataclass(frozen=True)
class Column:
    label: str
    numeric: bool = False
    title: str = ""


@dataclass(frozen=True)
class Value:
    text: str
    sort: str = ""  # the data-v the sorting script compares ('' sorts last)
    title: str = ""
    css: str = ""


@dataclass(frozen=True)
class Link:
    href: str
    text: str


@dataclass(frozen=True)
class Origin:
    """A cell's provenance as the page lists it."""

    model: str
    weights: str
    params: str
    rows: int
    hardware: tuple[str, ...]
    versions: tuple[str, ...]
    git_shas: tuple[str, ...]
    dates: str
    run_ids: tuple[str, ...]
    more_runs: int
    sources: tuple[Link, ...]
    partial_runs: tuple[str, ...] = ()


@dataclass
class Row:
    task: str
    model: str
    values: list[Value]
    origin: Origin | None = None


@dataclass
class TableView:
    columns: list[Column]
    rows: list[Row] = field(default_factory=list)


def number(value: float | None, digits: int = 3) -> Value:
    if value is None or not math.isfinite(value):
        return Value(MISSING)
    return Value(f"{value:,.{digits}f}", repr(float(value)))


def percent(value: float | None, digits: int = 1) -> Value:
    if value is None or not math.isfinite(value):
        return Value(MISSING)
    return Value(f"{100 * value:.{digits}f}", repr(float(value)))


def count(value: int) -> Value:
    return Value(f"{value:,}", str(value))


def interval(low: float, high: float, scale: float = 1.0, digits: int = 3) -> Value:
    if not (math.isfinite(low) and math.isfinite(high)):
        return Value(MISSING)
    return Value(f"{scale * low:.{digits}f}–{scale * high:.{digits}f}", repr(float(high - low)), "interval width")


def text(value: str, title: str = "") -> Value:
    return Value(value or MISSING, value, title)


@lru_cache(maxsize=4096)
def params_label(method: str, params: str) -> str:
    """The parameters that differ from the method's defaults (cachebench.semantic.report.short_params)."""
    return short_params(method, params)


def source_link(file: Path, out: Path) -> Link:
    """A relative link from the page's folder to a result file; never a bare scheme such as `javascript:`."""
    relative = Path(os.path.relpath(file.resolve(), out.resolve())).as_posix()
    return Link(quote(relative if relative.startswith("../") else "./" + relative, safe="/"), str(file))


def origin(provenance: Provenance, model: str, params: str, out: Path) -> Origin:
    dates = MISSING
    if provenance.first_run is not None and provenance.last_run is not None:
        first, last = (d.strftime("%Y-%m-%d %H:%M UTC") for d in (provenance.first_run, provenance.last_run))
        dates = first if first == last else f"{first} – {last}"
    return Origin(model=model, weights=", ".join(provenance.model_weights) or MISSING, params=params,
                  rows=provenance.rows, hardware=provenance.hardware, versions=provenance.versions,
                  git_shas=provenance.git_shas, dates=dates, run_ids=provenance.run_ids[:RUN_IDS_SHOWN],
                  more_runs=max(0, len(provenance.run_ids) - RUN_IDS_SHOWN),
                  sources=tuple(source_link(file, out) for file in provenance.sources),
                  partial_runs=provenance.partial_runs)


def method_value(method: str, provenance: Provenance) -> Value:
    """The method's name, marked when a run behind the cell did not finish (its file is a checkpoint)."""
    if provenance.partial_runs:
        runs = ", ".join(provenance.partial_runs)
        return Value(f"{method} (partial)", method, f"partial run(s): {runs}; fewer rows than planned", "partial")
    return text(method)


def model_value(model: str, random_weights: bool) -> Value:
    if random_weights:
        return Value(f"{model} (random weights)", model, "random weights: time and memory only, never quality",
                     "random")
    return text(model)


KV_COLUMNS = [
    Column("method"), Column("params", title="parameters that differ from the method's defaults"), Column("model"),
    Column("mode"), Column("compression"), Column("score", True, "mean score of the scored rows"),
    Column("95% CI", True, "bootstrap over episodes; sorts by width"), Column("n", True, "rows scored"),
    Column("errors", True, "rows without a score"),
    Column("KV ×full", True, "mean KV-cache bytes over full's, on the items both scored"),
    Column("TTFT ×full", True, "mean request time to first token over full's, on the items both scored"),
    Column("matched", True, "items (episode, turn) compared with full"),
    Column("KV MiB", True, "mean KV-cache size at the end of a turn"),
    Column("req TTFT ms", True, "context prefill (where the request paid it) + prompt + first token"),
    Column("front", title="on the quality-versus-KV-memory Pareto front of its task and model"),
]


def kv_row(cell: KVCell, out: Path) -> Row:
    score = number(cell.score)
    if cell.random_weights:
        score = Value(score.text + " †", score.sort, "random weights: the score means nothing", "random")
    params = params_label(cell.method, cell.method_params)
    values = [
        method_value(cell.method, cell.provenance), text(params, cell.method_params),
        model_value(cell.model, cell.random_weights),
        text(cell.mode), text(cell.compression), score, interval(cell.low, cell.high), count(cell.n),
        count(cell.errors), number(cell.kv_ratio, 2), number(cell.ttft_ratio, 2), count(cell.matched),
        number(cell.kv_bytes / 2**20, 1), number(cell.request_ttft_ms, 1),
        Value("★", "1", "on the Pareto front") if cell.pareto else Value("", ""),
    ]
    return Row(cell.task, cell.model, values, origin(cell.provenance, cell.model, cell.method_params, out))


SEMANTIC_COLUMNS = [
    Column("method"), Column("params", title="parameters that differ from the method's defaults"),
    Column("embedder"), Column("protocol"), Column("n", True, "requests scored (warm-up excluded)"),
    Column("hit %", True), Column("error %", True, "false hits over requests"),
    Column("error 95% CI", True, "bootstrap over requests; sorts by width"), Column("precision", True),
    Column("recall", True), Column("F1", True), Column("F1 95% CI", True, "sorts by width"),
    Column("stale %", True, "hits whose stored response was no longer valid"),
    Column("lookup p50 ms", True, "the cache's own lookup work"), Column("errors", True, "failed requests"),
]


def semantic_row(entry: SemanticEntry, out: Path) -> Row:
    key, overall = entry.cell.key, entry.overall
    return Row(key["task"], key["model"], [
        method_value(key["method"], entry.provenance),
        text(params_label(key["method"], key["method_params"]), key["method_params"]),
        text(key["model"]), text(key["mode"]), *_rates(overall), count(entry.cell.errors),
    ], origin(entry.provenance, key["model"], key["method_params"], out))


def _rates(score: CategoryScore) -> list[Value]:
    r, intervals = score.rates, score.intervals
    error_ci, f1_ci = intervals.get("error_rate"), intervals.get("f1")
    return [
        count(r.n), percent(r.hit_rate), percent(r.error_rate),
        interval(*error_ci, scale=100, digits=1) if error_ci else Value(MISSING), number(r.precision, 2),
        number(r.recall, 2), number(r.f1, 2), interval(*f1_ci, digits=2) if f1_ci else Value(MISSING),
        percent(r.stale_rate), number(score.lookup_p50, 3),
    ]


CATEGORY_COLUMNS = [
    Column("method"), Column("params"), Column("embedder"), Column("category"), *SEMANTIC_COLUMNS[4:14],
]


def category_rows(entry: SemanticEntry) -> list[Row]:
    """One row per category of a cell with several (its overall row is the main table's)."""
    key = entry.cell.key
    params = text(params_label(key["method"], key["method_params"]), key["method_params"])
    return [Row(key["task"], key["model"], [text(key["method"]), params, text(key["model"]), text(score.category),
                                            *_rates(score)])
            for score in entry.cell.categories if score.category != ALL]
