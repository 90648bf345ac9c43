"""Leaderboard cells as table rows the template renders as they are: display text, a sort key per column, and a
provenance block per row. Strings stay plain here; the template's autoescaping makes them safe."""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from urllib.parse import quote

from cachebench.errors import UsageError
from cachebench.leaderboard.cells import KVCell, Provenance, SemanticEntry
from cachebench.semantic.report import ALL, CategoryScore, short_params

RUN_IDS_SHOWN = 10
MISSING = "–"
DATA = "data"  # the page folder's sub-folder holding the result files it links to


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
    notes: tuple[tuple[str, str], ...] = ()  # (label, text): figures kept out of the table to let it fit the page


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


class SourceFiles:
    """The result files a page links to, published inside its folder (`out`/data/<stem>-<hash><suffix>) so the
    folder can be moved or served on its own: every link is relative, never leaves it, never has a scheme.

    A file is hard-linked where the file system allows (a snapshot: result files are replaced by a rename, never
    rewritten in place), else copied; the name's hash of the source's resolved path keeps two `rows.parquet` of
    different folders apart, and a rebuild replaces the same name."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self._links: dict[Path, Link] = {}

    def link(self, file: Path) -> Link:
        """The link to `file`'s published copy (published on first use); its text is the path as given."""
        if file not in self._links:
            self._links[file] = Link(quote(f"{DATA}/{self._publish(file)}", safe="/"), str(file))
        return self._links[file]

    def _publish(self, file: Path) -> str:
        source = file.resolve()
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", source.stem).strip("._") or "results"
        digest = hashlib.sha256(str(source).encode("utf-8", "surrogateescape")).hexdigest()[:10]
        name = f"{stem[:60]}-{digest}{re.sub(r'[^A-Za-z0-9.]+', '', source.suffix)}"
        folder = self.out / DATA
        target = folder / name
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if target.exists() and os.path.samefile(source, target):
                return name
            temporary = folder / f".{name}.{os.getpid()}.tmp"
            try:
                try:
                    os.link(source, temporary)
                except OSError:  # another file system, or links not allowed: a copy
                    shutil.copyfile(source, temporary)
                os.replace(temporary, target)
            finally:
                temporary.unlink(missing_ok=True)
        except OSError as exc:
            raise UsageError(f"--out {self.out}: cannot publish {file} into {folder} ({exc.strerror or exc})"
                             ) from None
        return name


def origin(provenance: Provenance, model: str, params: str, files: SourceFiles,
           notes: tuple[tuple[str, str], ...] = ()) -> Origin:
    dates = MISSING
    if provenance.first_run is not None and provenance.last_run is not None:
        first, last = (d.strftime("%Y-%m-%d %H:%M UTC") for d in (provenance.first_run, provenance.last_run))
        dates = first if first == last else f"{first} – {last}"
    return Origin(model=model, weights=", ".join(provenance.model_weights) or MISSING, params=params,
                  rows=provenance.rows, hardware=provenance.hardware, versions=provenance.versions,
                  git_shas=provenance.git_shas, dates=dates, run_ids=provenance.run_ids[:RUN_IDS_SHOWN],
                  more_runs=max(0, len(provenance.run_ids) - RUN_IDS_SHOWN),
                  sources=tuple(files.link(file) for file in provenance.sources),
                  partial_runs=provenance.partial_runs, notes=notes)


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
    Column("KV MiB", True, "mean KV-cache size at the end of a turn"),
    Column("req TTFT ms", True, "context prefill (where the request paid it) + prompt + first token"),
    Column("front", title="on the quality-versus-KV-memory Pareto front of its task and model"),
]


def kv_row(cell: KVCell, files: SourceFiles) -> Row:
    score = number(cell.score)
    if cell.random_weights:
        score = Value(score.text + " †", score.sort, "random weights: the score means nothing", "random")
    params = params_label(cell.method, cell.method_params)
    values = [
        method_value(cell.method, cell.provenance), text(params, cell.method_params),
        model_value(cell.group[1], cell.random_weights),
        text(cell.mode), text(cell.compression), score, interval(cell.low, cell.high), count(cell.n),
        count(cell.errors), number(cell.kv_ratio, 2), number(cell.ttft_ratio, 2),
        number(cell.kv_bytes / 2**20, 1), number(cell.request_ttft_ms, 1),
        Value("★", "1", "on the Pareto front") if cell.pareto else Value("", ""),
    ]
    matched = (("matched with full", f"{cell.matched:,} items (episode, turn) both scored"),)
    return Row(cell.task, cell.model, values, origin(cell.provenance, cell.group[1], cell.method_params, files,
                                                     matched))


SEMANTIC_COLUMNS = [
    Column("method"), Column("params", title="parameters that differ from the method's defaults"),
    Column("embedder"), Column("protocol"), Column("n", True, "requests scored (warm-up excluded)"),
    Column("hit %", True), Column("error %", True, "false hits over requests"),
    Column("error 95% CI", True, "bootstrap over requests; sorts by width"), Column("precision", True),
    Column("recall", True), Column("F1", True), Column("F1 95% CI", True, "sorts by width"),
    Column("stale %", True, "hits whose stored response was no longer valid"),
    Column("lookup p50 ms", True, "the cache's own lookup work"), Column("errors", True, "failed requests"),
]


def semantic_row(entry: SemanticEntry, files: SourceFiles) -> Row:
    key, overall = entry.cell.key, entry.overall
    return Row(key["task"], key["model"], [
        method_value(key["method"], entry.provenance),
        text(params_label(key["method"], key["method_params"]), key["method_params"]),
        text(key["model"]), text(key["mode"]), *_rates(overall), count(entry.cell.errors),
    ], origin(entry.provenance, key["model"], key["method_params"], files))


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
