"""`cachebench show`: one table per task of method x parameters x model x mode x compression setting, from any
result files."""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cachebench.results import read_results
from cachebench.stats import cluster_bootstrap_ci

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
    kv_bytes: float
    weights: str


def summarize(paths: Iterable[str | Path]) -> list[CellSummary]:
    """Group rows into cells and compute the score's 95% interval (bootstrap over episodes) and mean costs."""
    table = read_results(paths)
    columns = ["score", "episode_id", "run_id", "ttft_ms", "kv_bytes", "error", "model_weights", *_KEY]
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
                kv_bytes=float(np.mean([data["kv_bytes"][r] for r in ok])) if ok else float("nan"),
                weights=data["model_weights"][rows[0]],
            )
        )
    return cells


def _kv(value: float) -> str:
    return "-" if np.isnan(value) else f"{value / 2**20:,.1f}"


def render(cells: list[CellSummary], console: Console) -> None:
    """Print one rich table per task."""
    by_task: dict[str, list[CellSummary]] = defaultdict(list)
    for cell in cells:
        by_task[cell.key["task"]].append(cell)
    headers = ("method", "params", "model", "mode", "compression", "score", "95% CI", "n", "TTFT ms", "KV MiB",
               "errors")
    for task, task_cells in by_task.items():
        table = Table(title=escape(task), title_justify="left", box=box.SIMPLE_HEAD)
        for index, header in enumerate(headers):
            table.add_column(header, justify="left" if index < 5 else "right")
        for cell in task_cells:
            missing = np.isnan(cell.score)
            model = cell.key["model"] + (" (random weights)" if cell.weights == "random" else "")
            values = (
                cell.key["method"], cell.key["method_params"], model, cell.key["mode"], cell.key["compression"] or "-",
                "-" if missing else f"{cell.score:.3f}", "-" if missing else f"{cell.low:.3f}–{cell.high:.3f}",
                str(cell.n), "-" if np.isnan(cell.ttft_ms) else f"{cell.ttft_ms:,.1f}", _kv(cell.kv_bytes),
                str(cell.errors),
            )  # fmt: skip
            table.add_row(*(escape(value) for value in values))
        console.print(table)


def console_for_tables() -> Console:
    """A terminal keeps its width; piped output gets room for every column instead of 80 characters."""
    return Console() if sys.stdout.isatty() else Console(width=200)
