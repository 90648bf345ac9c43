"""The leaderboard page in a real headless Chromium, from file:// with no network: tables and SVG charts render,
sorting and the filters work, hostile strings show as text and run nothing, and the console stays clean. Charts
draw intervals and join each method's settings on axes fitted to the data, the page fits a 1400 px window, and
every link stays inside the published folder.

Built from the committed benchmark rows (KV reuse, semantic caches) plus a small synthetic KV set with eviction,
random weights and markup in every user-controlled string. Chromium is required, not optional: without it the
test fails and says how to install it.
"""

from __future__ import annotations

import re
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from conftest import REPO
from test_leaderboard import HOSTILE, hostile_rows, kv_row, matched_rows

from cachebench.leaderboard import build_site
from cachebench.results import write_atomic

BENCHMARKS = sorted((REPO / "results" / "benchmarks").glob("*.parquet"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]


def chromium() -> str:
    found = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if found is None:
        pytest.fail("Chromium is not installed; the leaderboard's browser test needs it: `apt-get install chromium` "
                    "(Debian/Ubuntu), or put a `chromium` on PATH", pytrace=False)
    return found


def eviction_rows() -> list[dict]:
    """snapkv at two ratios and a random-weights model beside full, so the KV-memory chart has a front."""
    rows = matched_rows()
    rows += [kv_row("snapkv", f"e{e}", t, 0.5, 50, method_params='{"ratio":0.5}', run_id="run-half")
             for e in range(3) for t in range(2)]
    rows += [kv_row(method, f"e{e}", 0, 0.0, 100 if method == "full" else 10, model="llama-3.1-8b",
                    model_weights="random") for method in ("full", "snapkv") for e in range(3)]
    return rows


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert BENCHMARKS, "the committed results/benchmarks/*.parquet are missing"
    folder = tmp_path_factory.mktemp("leaderboard")
    synthetic = write_atomic(eviction_rows(), folder / "rows" / "eviction.parquet")
    hostile = write_atomic(hostile_rows(), folder / "rows" / "hostile.parquet")
    return build_site([*BENCHMARKS, synthetic, hostile], folder / "site")


@pytest.fixture(scope="module")
def browser() -> Iterator:
    path = chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install 'cachebench[dev]'", pytrace=False)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


class Page:
    """A fresh tab on the page, recording console errors, page errors and dialogs."""

    def __init__(self, browser, site: Path) -> None:
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.tab = browser.new_page(viewport={"width": 1400, "height": 1000})
        self.tab.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        self.tab.on("pageerror", lambda error: self.errors.append(str(error)))
        self.tab.on("dialog", self._dialog)
        self.tab.goto(site.resolve().as_uri())
        self.tab.wait_for_load_state("load")

    def _dialog(self, dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def column(self, table, header: str) -> list[str]:
        labels = table.locator("thead th").all_inner_texts()
        index = [label.strip(" ▲▼") for label in labels].index(header)
        return table.locator(f"tbody tr td:nth-child({index + 1})").evaluate_all(
            "cells => cells.map(cell => cell.getAttribute('data-v'))")


@pytest.fixture
def page(browser, site: Path) -> Iterator[Page]:
    opened = Page(browser, site)
    yield opened
    opened.tab.close()
    assert not opened.errors, opened.errors
    assert not opened.dialogs, opened.dialogs


def test_tables_and_charts_render_and_the_page_is_self_contained(page: Page, tmp_path: Path):
    tab = page.tab
    for task in ("rag.passages", "semantic.stream", "multiturn.passkey"):
        section = tab.locator(f"section.task[data-task='{task}']")
        assert section.locator("table.cells tbody tr").count() > 0, task
        assert section.locator("svg.plot").count() > 0, task
    assert tab.locator("table.overview").count() >= 3
    charts = tab.locator("svg.plot")
    assert charts.count() >= 5
    titles = " ".join(charts.locator(".plot-title").all_text_contents())
    for title in ("Quality vs KV memory", "Quality vs time to first token", "Hit rate vs error rate",
                  "Hit rate per category"):
        assert title in titles
    labels = " ".join(charts.locator(".axis-label").all_text_contents())
    assert "KV-cache bytes ÷ full's" in labels and "error rate (false hits)" in labels and "hit rate" in labels
    assert tab.locator("svg .front").count() > 0  # the Pareto staircase
    assert tab.locator("#filter-count").inner_text().endswith("cells shown")
    details = tab.locator("section.task[data-task='rag.passages'] details").first
    details.locator("summary").click()
    assert "kv_reuse.parquet" in details.inner_text() and "SmolLM2-135M-Instruct" in details.inner_text()
    shot = tmp_path / "leaderboard.png"
    tab.screenshot(path=str(shot), full_page=True)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 1000 and height > 2000


def test_clicking_a_header_sorts_and_again_reverses(page: Page):
    table = page.tab.locator("section.task[data-task='semantic.stream'] table.cells")
    before = [float(v) for v in page.column(table, "hit %")]
    order = table.locator("tbody tr td:nth-child(2)").all_inner_texts()
    header = table.locator("thead th", has_text=re.compile(r"^hit %$"))
    header.click()
    ascending = [float(v) for v in page.column(table, "hit %")]
    assert ascending == sorted(before) and header.get_attribute("aria-sort") == "ascending"
    header.click()
    descending = [float(v) for v in page.column(table, "hit %")]
    assert descending == sorted(before, reverse=True) and header.get_attribute("aria-sort") == "descending"
    assert ascending != descending and table.locator("tbody tr td:nth-child(2)").all_inner_texts() != order
    method = table.locator("thead th", has_text=re.compile(r"^method$"))
    method.click()
    names = table.locator("tbody tr td:nth-child(1)").all_inner_texts()
    assert names == sorted(names, key=str.lower)


def test_filters_hide_other_models_and_tasks(page: Page):
    tab = page.tab
    rows = tab.locator("section.task table.cells tbody tr")
    total = rows.count()
    tab.select_option("#filter-model", "all-MiniLM-L6-v2")
    visible = tab.locator("section.task table.cells tbody tr:visible")
    assert 0 < visible.count() < total
    assert set(visible.evaluate_all("rows => rows.map(row => row.dataset.model)")) == {"all-MiniLM-L6-v2"}
    assert not tab.locator("section.task[data-task='rag.passages']").is_visible()
    assert tab.locator("#filter-count").inner_text() == f"{visible.count()} of {total} cells shown"
    tab.select_option("#filter-model", "")
    tab.select_option("#filter-task", "rag.passages")
    assert tab.locator("section.task:visible").count() == 1
    assert tab.locator("section.task:visible").get_attribute("data-task") == "rag.passages"
    assert tab.locator("section.task:visible table.cells tbody tr:visible").count() == 7
    tab.select_option("#filter-task", "")
    assert tab.locator("section.task table.cells tbody tr:visible").count() == total


def test_hostile_strings_show_as_text_and_run_nothing(page: Page):
    tab = page.tab
    assert tab.locator("script").count() == 1
    heading = tab.locator("section.task h3").filter(has_text=f"multiturn.{HOSTILE}")
    assert heading.count() == 1 and heading.is_visible()
    assert heading.inner_text() == f"multiturn.{HOSTILE}"
    assert tab.locator("section.task h3").filter(has_text=f"semantic.{HOSTILE}").count() == 1
    assert tab.locator(f"option[value='{HOSTILE}']").count() == 1
    assert tab.locator("img").count() == 0
    legend = tab.locator("svg .legend").filter(has_text="<script>")
    assert legend.count() > 0
    assert tab.evaluate("() => window.alerted === undefined")


CHART_FACTS = """svg => ({
    title: svg.querySelector('.plot-title').textContent,
    subtitle: svg.querySelector('.plot-subtitle').textContent,
    scatter: svg.classList.contains('scatter'),
    errorbars: svg.querySelectorAll('.errorbar').length,
    yTicks: Array.from(svg.querySelectorAll('.y-tick'), t => t.textContent),
    series: Array.from(svg.querySelectorAll('g.series'), g => ({
        name: g.getAttribute('data-series'),
        points: g.querySelectorAll('.point').length,
        lines: Array.from(g.querySelectorAll('.method-line'), line => line.getAttribute('points').trim().split(/\\s+/)
                          .map(pair => pair.split(',').map(Number))),
    })),
})"""


def tick_values(labels: list[str]) -> list[float]:
    return [float(label.rstrip("%")) / (100 if label.endswith("%") else 1) for label in labels]


def test_every_chart_draws_intervals_and_joins_each_methods_settings(page: Page):
    charts = page.tab.locator("svg.plot").evaluate_all(f"svgs => svgs.map({CHART_FACTS})")
    assert len(charts) >= 5
    joined = 0
    for chart in charts:
        assert chart["errorbars"] > 0, chart["title"]  # every chart's data have intervals (two episodes or more)
        for series in chart["series"]:
            if series["points"] < 2:
                assert not series["lines"], series
                continue
            assert len(series["lines"]) == 1, series  # one line per method, through all of its points, in x order
            line = series["lines"][0]
            assert len(line) == series["points"] and [x for x, _ in line] == sorted(x for x, _ in line), series
            joined += 1
    assert joined >= 4
    kv = next(c for c in charts if c["title"] == "Quality vs KV memory" and c["subtitle"].startswith("longconvqa"))
    points = {s["name"]: s["points"] for s in kv["series"]}
    assert all(points[method] >= 3 for method in ("snapkv", "streamingllm", "epicache")), points
    assert all(len(s["lines"]) == 1 for s in kv["series"] if s["name"] != "full")


def test_a_small_score_range_gets_a_fitted_y_axis(page: Page):
    """longconvqa's scores lie between 0.04 and 0.18 with their intervals: the axis shows that range, not 0 to 1."""
    table = page.tab.locator("section.task[data-task='longconvqa.sessions'] table.cells")
    bounds = [tuple(map(float, text.split("–"))) for text in
              table.locator("tbody tr td:nth-child(8)").all_inner_texts()]
    assert table.locator("thead th:nth-child(8)").inner_text().strip(" ▲▼") == "95% CI" and len(bounds) >= 10
    low, high = min(b[0] for b in bounds), max(b[1] for b in bounds)
    assert high - low < 0.3
    chart = page.tab.locator("svg.plot.scatter").filter(has_text="Quality vs KV memory").filter(
        has_text="longconvqa.sessions").first
    ticks = tick_values(chart.locator(".y-tick").all_text_contents())
    assert ticks == sorted(ticks) and len(ticks) >= 3
    assert ticks[0] <= low and ticks[-1] >= high  # every interval fits on the axis
    assert ticks[-1] < 0.5 and ticks[-1] - ticks[0] <= 2 * (high - low)  # and the axis is not 0 to 1


def test_the_page_fits_a_1400_pixel_window(page: Page):
    tab = page.tab
    assert tab.viewport_size["width"] == 1400
    assert tab.evaluate("() => document.documentElement.scrollWidth") <= 1400
    overflowing = tab.locator(".table-wrap").evaluate_all(
        "wraps => wraps.filter(w => w.scrollWidth > w.clientWidth).map(w => w.closest('section').id)")
    assert overflowing == []  # no table scrolls on its own either
    assert tab.locator("table.cells thead th", has_text=re.compile(r"^matched$")).count() == 0
    details = tab.locator("section.task[data-task='longconvqa.sessions'] td.origin details").first
    details.locator("summary").click()
    assert "matched with full" in details.inner_text()


def test_every_link_stays_inside_the_published_folder(page: Page, site: Path):
    folder = site.parent.resolve()
    links = page.tab.locator("a[href]").evaluate_all(
        "links => links.map(a => [a.getAttribute('href'), a.href, a.textContent])")
    files = [(href, resolved, text) for href, resolved, text in links if not href.startswith("#")]
    assert len(files) >= len(BENCHMARKS) + 2
    for href, resolved, text in files:
        parts = urlsplit(href)
        assert not (parts.scheme or parts.netloc or href.startswith("/") or ".." in href.split("/")), href
        assert resolved.startswith(folder.as_uri() + "/"), resolved  # as the browser itself resolves it
        published = (folder / unquote(parts.path)).resolve()
        assert published.is_relative_to(folder) and published.is_file(), href
        assert published.read_bytes() == Path(text).read_bytes()  # the copy of the file the link names
    assert {Path(text).resolve() for *_, text in files} >= {file.resolve() for file in BENCHMARKS}
