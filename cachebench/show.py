"""`cachebench show`: one table per task of method x parameters x model x mode x compression setting, from any
result files; a KV task whose turns have several categories (question types, needle depths, sub-tasks) also gets
the score per category; semantic-cache rows get their own per-category tables (cachebench.semantic.report)."""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cachebench.metrics import longconvqa_em, longconvqa_meta
from cachebench.results import describe_partial, partial_runs, read_results
from cachebench.stats import cluster_bootstrap_ci
from cachebench.taskspec import SEMANTIC_METRIC

_KEY = ("task", "method", "method_params", "model", "mode", "compression")


@dataclass
class CellSummary:
    """Aggregates of one (task, method, params, model, mode, compression) cell."""

    key: dict[str, str]
    score: float
    low: float
    high: float
    n: int
    errors: int
    ttft_ms: float
    request_ttft_ms: float  # what a request waited for its first token, context prefill included (see below)
    kv_bytes: float
    weights: str
    partial: bool = False  # some rows come from a run that did not finish (results.partial_runs)
    ttft_ratio: float = float("nan")  # request_ttft_ms over the `full` cell's of the same task, model and mode


def request_ttft(mode: str, turn: int, prefill_ms: float | None, ttft_ms: float | None) -> float:
    """Time to first token of the request a row stands for.

    A multi-request row is a whole request (its context, then its question): without reuse its context is
    prefilled again, so the context prefill counts. In multi-turn mode only the first turn prefilled the context.
    """
    nan = float("nan")
    ttft = nan if ttft_ms is None else ttft_ms
    if mode == "multi-request" or turn == 0:
        return ttft + (nan if prefill_ms is None else prefill_ms)
    return ttft


def _split_tracks(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(KV rows, semantic-cache rows)."""
    semantic = pc.fill_null(pc.equal(table["metric"], SEMANTIC_METRIC), False)
    return table.filter(pc.invert(semantic)), table.filter(semantic)


def summarize(paths: Iterable[str | Path]) -> list[CellSummary]:
    """Group KV rows into cells and compute the score's 95% interval (bootstrap over episodes) and mean costs."""
    return _summarize_table(_split_tracks(read_results(paths))[0])


def show(paths: Iterable[str | Path], console: Console, false_hit_ms: float | None = None) -> None:
    """Print every table the rows call for: KV cells, then semantic caches per category."""
    from cachebench.semantic.report import render_semantic, summarize_semantic

    table = read_results(paths)
    for run in partial_runs(table):
        console.print(f"warning: {describe_partial(run)}; its cells are marked (partial)", markup=False,
                      highlight=False)
    kv_rows, semantic_rows = _split_tracks(table)
    if kv_rows.num_rows:
        render(_summarize_table(kv_rows), console)
        render_categories(summarize_categories(kv_rows), console)
    if semantic_rows.num_rows:
        render_semantic(summarize_semantic(semantic_rows, false_hit_ms), console)


def _summarize_table(table: pa.Table) -> list[CellSummary]:
    columns = ["score", "episode_id", "run_id", "turn", "prefill_ms", "ttft_ms", "kv_bytes", "error", "model_weights",
               "run_complete", *_KEY]
    data = table.select(columns).to_pydict()
    groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for row in range(table.num_rows):
        groups[tuple(data[k][row] for k in _KEY)].append(row)
    cells = []
    for key, rows in sorted(groups.items(), key=lambda item: tuple(str(v) for v in item[0])):
        ok = [r for r in rows if data["error"][r] is None and data["score"][r] is not None]
        scores = [data["score"][r] for r in ok]
        clusters = [f"{data['run_id'][r]}/{data['episode_id'][r]}" for r in ok]
        mean, low, high = cluster_bootstrap_ci(scores, clusters)
        cells.append(
            CellSummary(
                key=dict(zip(_KEY, key, strict=True)),
                score=mean,
                low=low,
                high=high,
                n=len(ok),
                errors=len(rows) - len(ok),
                ttft_ms=float(np.nanmean([data["ttft_ms"][r] for r in ok])) if ok else float("nan"),
                request_ttft_ms=_mean(
                    [request_ttft(data["mode"][r], data["turn"][r], data["prefill_ms"][r], data["ttft_ms"][r])
                     for r in ok]
                ),
                kv_bytes=float(np.mean([data["kv_bytes"][r] for r in ok])) if ok else float("nan"),
                weights=data["model_weights"][rows[0]],
                partial=any(data["run_complete"][r] is False for r in rows),
            )
        )
    _add_ttft_ratios(cells)
    return cells


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and not np.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _add_ttft_ratios(cells: list[CellSummary]) -> None:
    """Each cell's request TTFT over the `full` method's on the same task, model and mode (the baseline a reuse
    method is judged against); cells without such a baseline keep NaN."""
    baseline: dict[tuple[str, ...], float] = {}
    for cell in cells:
        if cell.key["method"] == "full":
            baseline.setdefault((cell.key["task"], cell.key["model"], cell.key["mode"]), cell.request_ttft_ms)
    for cell in cells:
        reference = baseline.get((cell.key["task"], cell.key["model"], cell.key["mode"]), float("nan"))
        if reference and not np.isnan(reference):
            cell.ttft_ratio = cell.request_ttft_ms / reference


def _ms(value: float) -> str:
    return "-" if np.isnan(value) else f"{value:,.1f}"


def _kv(value: float) -> str:
    return "-" if np.isnan(value) else f"{value / 2**20:,.1f}"


def render(cells: list[CellSummary], console: Console) -> None:
    """Print one rich table per task."""
    by_task: dict[str, list[CellSummary]] = defaultdict(list)
    for cell in cells:
        by_task[cell.key["task"]].append(cell)
    headers = ("method", "params", "model", "mode", "compression", "score", "95% CI", "n", "TTFT ms", "req TTFT ms",
               "TTFT×full", "KV MiB", "errors")
    for task, task_cells in by_task.items():
        table = Table(title=escape(task), title_justify="left", box=box.SIMPLE_HEAD)
        for index, header in enumerate(headers):
            table.add_column(header, justify="left" if index < 5 else "right")
        for cell in task_cells:
            missing = np.isnan(cell.score)
            model = cell.key["model"] + (" (random weights)" if cell.weights == "random" else "")
            method = cell.key["method"] + (" (partial)" if cell.partial else "")
            values = (
                method, cell.key["method_params"], model, cell.key["mode"], cell.key["compression"] or "-",
                "-" if missing else f"{cell.score:.3f}", "-" if missing else f"{cell.low:.3f}–{cell.high:.3f}",
                str(cell.n), _ms(cell.ttft_ms), _ms(cell.request_ttft_ms),
                "-" if np.isnan(cell.ttft_ratio) else f"{cell.ttft_ratio:.2f}", _kv(cell.kv_bytes),
                str(cell.errors),
            )  # fmt: skip
            table.add_row(*(escape(value) for value in values))
        console.print(table)


@dataclass
class CategorySummary:
    """One category of one cell: its score with a 95% interval (bootstrap over episodes) and, for longconvqa
    rows, exact match."""

    key: dict[str, str]
    category: str
    score: float
    low: float
    high: float
    n: int
    em: float  # mean exact match of the rows scored with EM_METRIC; NaN when there are none


EM_METRIC = "longconvqa_f1"  # rows whose exact match `show` recomputes from prediction and references


def summarize_categories(table: pa.Table) -> list[CategorySummary]:
    """Per (cell, category) summaries for the KV tasks whose rows have more than one distinct non-empty category."""
    columns = ["score", "episode_id", "run_id", "error", "category", "metric", "prediction", "references", *_KEY]
    data = table.select(columns).to_pydict()
    categories: dict[str, set[str]] = defaultdict(set)
    for row in range(table.num_rows):
        if data["category"][row]:
            categories[data["task"][row]].add(data["category"][row])
    groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for row in range(table.num_rows):
        if data["category"][row] and len(categories[data["task"][row]]) > 1:
            groups[(*(data[k][row] for k in _KEY), data["category"][row])].append(row)
    out = []
    for key, rows in sorted(groups.items(), key=lambda item: tuple(str(v) for v in item[0])):
        ok = [r for r in rows if data["error"][r] is None and data["score"][r] is not None]
        mean, low, high = cluster_bootstrap_ci(
            [data["score"][r] for r in ok], [f"{data['run_id'][r]}/{data['episode_id'][r]}" for r in ok]
        )
        exact = [
            longconvqa_em(data["prediction"][r] or "", data["references"][r] or [],
                          longconvqa_meta(data["category"][r], data["references"][r] or []))
            for r in ok if data["metric"][r] == EM_METRIC
        ]  # fmt: skip
        out.append(
            CategorySummary(
                key=dict(zip(_KEY, key[:-1], strict=True)), category=key[-1], score=mean, low=low, high=high,
                n=len(ok), em=float(np.mean(exact)) if exact else float("nan"),
            )
        )  # fmt: skip
    return out


def render_categories(summaries: list[CategorySummary], console: Console) -> None:
    """Print one table per task: each cell's score by category."""
    by_task: dict[str, list[CategorySummary]] = defaultdict(list)
    for summary in summaries:
        by_task[summary.key["task"]].append(summary)
    headers = ("method", "params", "model", "mode", "compression", "category", "n", "score", "95% CI", "EM")
    for task, rows in by_task.items():
        table = Table(title=escape(f"{task} by category"), title_justify="left", box=box.SIMPLE_HEAD)
        for index, header in enumerate(headers):
            table.add_column(header, justify="left" if index < 6 else "right")
        for row in rows:
            missing = np.isnan(row.score)
            values = (
                row.key["method"], row.key["method_params"], row.key["model"], row.key["mode"],
                row.key["compression"] or "-", row.category, str(row.n),
                "-" if missing else f"{row.score:.3f}", "-" if missing else f"{row.low:.3f}–{row.high:.3f}",
                "-" if np.isnan(row.em) else f"{row.em:.3f}",
            )  # fmt: skip
            table.add_row(*(escape(value) for value in values))
        console.print(table)


def console_for_tables() -> Console:
    """A terminal keeps its width; piped output gets room for every column instead of 80 characters."""
    return Console() if sys.stdout.isatty() else Console(width=200)
