"""`cachebench show`: the cells of any result files as tables, in the terminal, as Markdown, CSV or JSON.

The cells are the leaderboard's (cachebench.leaderboard.aggregate: cachebench.cells' identity, each item once,
intervals from cachebench.stats), so `show`, `gate` and the leaderboard never disagree on a number. KV and perf
cells get one table per task, a task whose turns have several categories also a table by category, and semantic
caches their per-category tables (cachebench.semantic.report). Parameters are shown where they differ from the
method's defaults; every column that is the same for a whole table goes into its title.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cachebench.leaderboard.cells import KVCell, Leaderboard
from cachebench.results import describe_partial
from cachebench.semantic.report import ALL, MISSING, Section, semantic_sections, short_params

FORMATS = ("table", "markdown", "csv", "json")
LEGEND = ("TTFT (question): time to the first token of the question alone, the context already in the cache. "
          "TTFT (request, with context): what the whole request waited, the context's prefill included where the "
          "request paid for it (every multi-request turn, the first multi-turn turn) — the figure vLLM and SGLang "
          "report as TTFT. ×full: that request TTFT (KV: the cache's bytes) over the `full` cell's on the same "
          "items. 95% CI: bootstrap over episodes; – where fewer than two episodes.")


def summarize(paths: Iterable[str | Path]) -> list[KVCell]:
    """The KV and perf cells of the result files, as `show` prints them."""
    from cachebench.leaderboard.aggregate import aggregate

    return aggregate(paths).kv


def show(paths: Iterable[str | Path], console: Console, false_hit_ms: float | None = None,
         output: str = "table") -> None:
    """Print every table the rows call for, in `output` format (one of FORMATS)."""
    from cachebench.leaderboard.aggregate import aggregate

    board = aggregate(paths, penalty_ms=false_hit_ms)
    if output in ("csv", "json"):
        records = cell_records(board)
        sys.stdout.write(_csv(records) if output == "csv" else json.dumps(records, indent=1, allow_nan=False) + "\n")
        return
    warnings = [f"warning: {describe_partial(run)}; its cells are marked (partial)" for run in board.partial]
    found = sections(board)
    legend = [LEGEND] if board.kv else []
    if output == "markdown":
        sys.stdout.write("".join(f"{line}\n\n" for line in warnings) + markdown(found)
                         + "".join(f"\n{line}\n" for line in legend))
        return
    for line in warnings:
        console.print(line, markup=False, highlight=False)
    for section in found:
        console.print(_rich(section))
    for line in legend:
        console.print(line, markup=False, highlight=False, style="dim")


def sections(board: Leaderboard) -> list[Section]:
    """The tables of `board`: KV and perf cells per task, KV categories, then the semantic caches'."""
    out = []
    by_task: dict[str, list[KVCell]] = defaultdict(list)
    for cell in board.kv:
        by_task[cell.task].append(cell)
    for task, cells in by_task.items():
        out.append(_kv_section(task, cells))
        if any(cell.categories for cell in cells):
            out.append(_category_section(task, cells))
    out.extend(semantic_sections([entry.cell for entry in board.semantic]))
    return out


def _identity(cell: KVCell) -> dict[str, str]:
    """The identity columns of a KV cell as shown: only parameters that differ from the method's defaults."""
    return {
        "method": cell.method + (" (partial)" if cell.provenance.partial_runs else ""),
        "params": short_params(cell.method, cell.method_params),
        "model": cell.model + (" (random weights)" if cell.random_weights else ""),
        "dtype": cell.dtype or MISSING,
        "mode": cell.mode or MISSING,
        "compression": cell.compression or MISSING,
        "context": f"{cell.context_length:,}" if cell.context_length else MISSING,
    }


def _split_constant(identities: list[dict[str, str]], keep: tuple[str, ...]) -> tuple[list[str], str]:
    """(the identity columns that vary within the table, or are in `keep`; the others as `name value` text)."""
    varying, constant = [], []
    for name in identities[0]:
        values = {identity[name] for identity in identities}
        if name in keep or len(values) > 1:
            varying.append(name)
        elif values != {MISSING}:
            constant.append(f"{name} {values.pop()}")
    return varying, ", ".join(constant)


def _kv_section(task: str, cells: list[KVCell]) -> Section:
    identities = [_identity(cell) for cell in cells]
    varying, constant = _split_constant(identities, ("method", "params"))
    perf = all(cell.track == "perf" for cell in cells)
    measures = ("n", "TTFT (question) ms", "TTFT (request, with context) ms", "TTFT ×full", "KV MiB", "KV ×full",
                "decode ms/token", "errors")
    headers = (*varying, *(() if perf else ("score", "95% CI")), *measures)
    section = Section(task + (f" — {constant}" if constant else ""), headers, left=len(varying))
    for cell, identity in zip(cells, identities, strict=True):
        quality = () if perf else (_number(cell.score, 3), _interval(cell.low, cell.high))
        section.rows.append((*(identity[name] for name in varying), *quality, str(cell.n),
                             _number(cell.question_ttft_ms, 1), _number(cell.request_ttft_ms, 1),
                             _number(cell.ttft_ratio, 2), _number(cell.kv_bytes / 2**20, 2),
                             _number(cell.kv_ratio, 2), _number(cell.decode_ms, 2), str(cell.errors)))
    return section


def _category_section(task: str, cells: list[KVCell]) -> Section:
    categorised = [cell for cell in cells if cell.categories]
    identities = [_identity(cell) for cell in categorised]
    varying, constant = _split_constant(identities, ("method", "params"))
    section = Section(f"{task} by category" + (f" — {constant}" if constant else ""),
                      (*varying, "category", "n", "score", "95% CI", "EM"), left=len(varying) + 1)
    for cell, identity in zip(categorised, identities, strict=True):
        for category in cell.categories:
            section.rows.append((*(identity[name] for name in varying), category.category, str(category.n),
                                 _number(category.score, 3), _interval(category.low, category.high),
                                 _number(category.em, 3)))
    return section


def _number(value: float, digits: int) -> str:
    return MISSING if value is None or not math.isfinite(value) else f"{value:,.{digits}f}"


def _interval(low: float, high: float) -> str:
    """The bounds, or – where there is no interval (fewer than two episodes): never a zero-width one."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return MISSING
    return f"{low:.3f}–{high:.3f}"


def _rich(section: Section) -> Table:
    table = Table(title=escape(section.title), title_justify="left", box=box.SIMPLE_HEAD)
    for index, header in enumerate(section.headers):
        table.add_column(escape(header), justify="left" if index < section.left else "right", overflow="fold")
    for row in section.rows:
        table.add_row(*(escape(value) for value in row))
    return table


def markdown(found: list[Section]) -> str:
    """GitHub-flavoured Markdown tables (pipes in values escaped), each under its title."""
    parts = []
    for section in found:
        align = ["---" if index < section.left else "---:" for index in range(len(section.headers))]
        lines = [f"### {section.title}", "", _md_row(section.headers), "| " + " | ".join(align) + " |"]
        lines += [_md_row(row) for row in section.rows]
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def _md_row(values: Iterable[str]) -> str:
    return "| " + " | ".join(value.replace("|", "\\|") for value in values) + " |"


def cell_records(board: Leaderboard) -> list[dict[str, Any]]:
    """One flat record per (cell, category) — category `all` for the cell as a whole — with full-precision
    numbers (None where undefined) and the complete identity: the CSV and JSON formats."""
    records = []
    for cell in board.kv:
        identity = _record_identity(cell.track, cell.task, cell.method, cell.method_params, cell.model,
                                    cell.model_weights, cell.dtype, cell.mode, cell.compression, cell.context_length)
        common = {**identity, "partial": bool(cell.provenance.partial_runs)}
        records.append({**common, "category": ALL, "n": cell.n, "score": _value(cell.score),
                        "ci_low": _value(cell.low), "ci_high": _value(cell.high), "exact_match": None,
                        "ttft_question_ms": _value(cell.question_ttft_ms),
                        "ttft_request_ms": _value(cell.request_ttft_ms), "ttft_ratio_full": _value(cell.ttft_ratio),
                        "kv_bytes": _value(cell.kv_bytes), "kv_ratio_full": _value(cell.kv_ratio),
                        "decode_ms_per_token": _value(cell.decode_ms), "errors": cell.errors})
        for category in cell.categories:
            records.append({**common, "category": category.category, "n": category.n,
                            "score": _value(category.score), "ci_low": _value(category.low),
                            "ci_high": _value(category.high), "exact_match": _value(category.em)})
    for entry in board.semantic:
        key = entry.cell.key
        identity = _record_identity("semantic", key["task"], key["method"], key["cell_params"], key["model"],
                                    key["model_weights"], key["dtype"], key["mode"], key["compression"],
                                    key["context_length"])
        for score in entry.cell.categories:
            rates, found = score.rates, score.intervals
            records.append({**identity, "partial": entry.cell.partial, "category": score.category, "n": rates.n,
                            "hit_rate": _value(rates.hit_rate), **_bounds(found, "hit_rate"),
                            "error_rate": _value(rates.error_rate), **_bounds(found, "error_rate"),
                            "precision": _value(rates.precision), **_bounds(found, "precision"),
                            "recall": _value(rates.recall), **_bounds(found, "recall"),
                            "f1": _value(rates.f1), **_bounds(found, "f1"), "f05": _value(rates.f05),
                            **_bounds(found, "f05"), "stale_rate": _value(rates.stale_rate),
                            "lookup_p50_ms": _value(score.lookup_p50), "lookup_p95_ms": _value(score.lookup_p95),
                            "embed_p50_ms": _value(score.embed_p50), "embed_p95_ms": _value(score.embed_p95),
                            "break_even_hit_rate": _value(score.cost.break_even) if score.cost else None,
                            "errors": entry.cell.errors})
    return records


def _record_identity(track: str, task: str, method: str, params: str, model: str, weights: str, dtype: str,
                     mode: str, compression: str, context: object) -> dict[str, Any]:
    return {"track": track, "task": task, "method": method, "params": short_params(method, params),
            "cell_params": params, "model": model, "model_weights": weights or None, "dtype": dtype or None,
            "mode": mode or None, "compression": compression or None,
            "context_length": int(context) if context not in (None, "") else None}


def _bounds(found: dict[str, tuple[float, float]], name: str) -> dict[str, float | None]:
    low, high = found.get(name, (math.nan, math.nan))
    return {f"{name}_low": _value(low), f"{name}_high": _value(high)}


def _value(value: float | None) -> float | None:
    """A number for CSV/JSON: None where undefined (NaN or infinite), so no reader meets a NaN literal."""
    return None if value is None or not math.isfinite(value) else float(value)


def _csv(records: list[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(name for record in records for name in record))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue()


def console_for_tables() -> Console:
    """A terminal keeps its width; piped output gets room for every column instead of 80 characters."""
    return Console() if sys.stdout.isatty() else Console(width=200)
