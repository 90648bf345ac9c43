"""The leaderboard page: one self-contained `index.html` (styles, script and SVG charts inline) that works from
file:// with no network.

Every string from result files reaches the page through jinja2 with autoescaping on (or markupsafe.escape in the
SVG charts), so a `<script>` in a prediction, task or parameter is shown as text. As a second line, a Content
Security Policy lets only the page's own script run (by its SHA-256) and loads nothing from anywhere.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import jinja2
from markupsafe import Markup

from cachebench.errors import UsageError
from cachebench.leaderboard.aggregate import aggregate
from cachebench.leaderboard.cells import KVCell, Leaderboard, SemanticEntry
from cachebench.leaderboard.figures import Figure, kv_figures, semantic_figures
from cachebench.leaderboard.overview import kv_overview, semantic_overview
from cachebench.leaderboard.plots import style_for
from cachebench.leaderboard.views import (
    CATEGORY_COLUMNS,
    KV_COLUMNS,
    SEMANTIC_COLUMNS,
    SourceFiles,
    TableView,
    category_rows,
    kv_row,
    semantic_row,
)

PAGE = "index.html"


@dataclass
class TaskView:
    name: str
    anchor: str
    figures: list[Figure]
    table: TableView
    categories: TableView | None = None


@dataclass
class FamilyView:
    name: str
    track: str
    anchor: str
    overview: TableView
    tasks: list[TaskView]


def build_site(paths: list[Path], out: Path) -> Path:
    """Aggregate the result files and directories in `paths` and write `out`/index.html; return its path."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    return render_site(aggregate(paths), out)


def render_site(board: Leaderboard, out: Path) -> Path:
    """Write the page for an aggregated leaderboard (through a temporary file and a rename)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot create the directory ({exc.strerror})") from None
    page = out / PAGE
    temporary = out / f".{PAGE}.{os.getpid()}.tmp"
    try:
        temporary.write_text(render_page(board, out), encoding="utf-8")
        os.replace(temporary, page)
    finally:
        temporary.unlink(missing_ok=True)
    return page


def render_page(board: Leaderboard, out: Path) -> str:
    """The page's HTML, for the folder `out` where the page will live; the result files it links to are published
    into `out`/data (views.SourceFiles), so every link stays inside the folder."""
    files = SourceFiles(out)
    script, css = _asset("leaderboard.js"), _asset("leaderboard.css")
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode()
    csp = (f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; img-src data:; "
           "base-uri 'none'; form-action 'none'")
    cells = [*board.kv, *board.semantic]
    dates = [d for c in cells for d in (c.provenance.first_run, c.provenance.last_run) if d is not None]
    return _environment().get_template("index.html.j2").render(
        csp=csp, css=Markup(css), script=Markup(script), rows=board.rows,
        sources=[files.link(file) for file in board.sources], kv_cells=len(board.kv),
        semantic_cells=len(board.semantic), generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        dates=f"{min(dates):%Y-%m-%d} to {max(dates):%Y-%m-%d}" if dates else "",
        models=sorted({c.model for c in board.kv} | {e.cell.key["model"] for e in board.semantic}),
        tasks=sorted({c.task for c in board.kv} | {e.cell.key["task"] for e in board.semantic}),
        families=families(board, files),
    )


def families(board: Leaderboard, files: SourceFiles) -> list[FamilyView]:
    """KV families first, then semantic ones, each with an overview and a section per task."""
    methods = sorted({c.method for c in board.kv} | {e.cell.key["method"] for e in board.semantic})
    styles = {method: style_for(index) for index, method in enumerate(methods)}
    kv: dict[str, dict[str, list[KVCell]]] = defaultdict(lambda: defaultdict(list))
    for cell in board.kv:
        kv[cell.family][cell.task].append(cell)
    semantic: dict[str, dict[str, list[SemanticEntry]]] = defaultdict(lambda: defaultdict(list))
    for entry in board.semantic:
        semantic[entry.family][entry.cell.key["task"]].append(entry)
    views: list[FamilyView] = []
    for name, tasks in sorted(kv.items()):
        task_views = [TaskView(task, f"task-{len(views)}-{index}", kv_figures(cells, styles),
                               TableView(KV_COLUMNS, [kv_row(c, files) for c in cells]))
                      for index, (task, cells) in enumerate(sorted(tasks.items()))]
        views.append(FamilyView(name, "KV cache", f"family-{len(views)}",
                                kv_overview([c for cells in tasks.values() for c in cells]), task_views))
    for name, tasks in sorted(semantic.items()):
        task_views = [TaskView(task, f"task-{len(views)}-{index}", semantic_figures(entries, board.curves, styles),
                               TableView(SEMANTIC_COLUMNS, [semantic_row(e, files) for e in entries]),
                               TableView(CATEGORY_COLUMNS, [row for e in entries for row in category_rows(e)]))
                      for index, (task, entries) in enumerate(sorted(tasks.items()))]
        views.append(FamilyView(name, "semantic cache", f"family-{len(views)}",
                                semantic_overview([e for entries in tasks.values() for e in entries], board.curves),
                                task_views))
    return views


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath("templates", name).read_text(encoding="utf-8")


def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FunctionLoader(_asset), autoescape=True, trim_blocks=True,
                              lstrip_blocks=True, undefined=jinja2.StrictUndefined)
