"""The leaderboard's numbers against hand-computed ones and against `cachebench show` on small synthetic rows; hostile
strings escaped in the page; many files and folders; bad input as one-line UsageErrors."""

from __future__ import annotations

import base64
import hashlib
import html as markup
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cachebench.errors import UsageError
from cachebench.leaderboard import aggregate, build_site
from cachebench.leaderboard.kv import pareto_front
from cachebench.results import METADATA_KEY, SCHEMA, UPGRADABLE, read_results, write_atomic
from cachebench.semantic.report import tradeoff
from cachebench.semantic.summary import summarize_semantic
from cachebench.stats import cluster_bootstrap_ci, cluster_intervals, f1_intervals, wilson_interval

HOSTILE = "<script>alert(1)</script>"
ATTRIBUTE_BREAK = '"><img src=x onerror=alert(2)>'


def kv_row(method: str = "full", episode: str = "e0", turn: int = 0, score: float | None = 1.0, kv: int = 100,
           ttft: float = 10.0, prefill: float = 90.0, **extra) -> dict:
    """A KV result row; keyword arguments override any column."""
    return {"run_id": f"run-{method}", "created_at": datetime(2026, 1, 2, 3, 4, tzinfo=UTC),
            "cachebench_version": "0.1.0", "git_sha": "abc1234", "task": "multiturn.passkey", "subtask": "passkey",
            "mode": "multi-turn", "compression": "query-agnostic", "method": method,
            "method_params": "{}" if method == "full" else '{"ratio":0.25}', "model": "m",
            "model_weights": "pretrained", "hardware": "test cpu x2", "episode_id": episode, "turn": turn,
            "category": "depth-0", "prediction": "p", "references": ["r"], "metric": "substring", "score": score,
            "kv_bytes": kv, "ttft_ms": ttft, "prefill_ms": prefill, "reused_tokens": 0, **extra}


def semantic_row(turn: int, outcome: str, category: str = "a", method: str = "threshold", threshold: float = 0.8,
                 **extra) -> dict:
    return {"run_id": f"run-{method}-{threshold}", "created_at": datetime(2026, 1, 3, tzinfo=UTC),
            "cachebench_version": "0.1.0", "git_sha": "abc1234", "task": "semantic.stream", "subtask": "stream",
            "mode": "stream", "method": method, "method_params": f'{{"threshold":{threshold}}}', "model": "emb",
            "model_weights": "pretrained", "hardware": "test cpu x2", "episode_id": f"r{turn}", "turn": turn,
            "category": category, "prediction": "", "references": ["x"], "metric": "semantic_outcome",
            "score": 0.0 if outcome == "FP" else 1.0, "hit": outcome in ("TP", "FP"), "outcome": outcome,
            "lookup_ms": float(turn + 1), "stale": False, "warmup": False, **extra}


def matched_rows() -> list[dict]:
    """`full` on episodes e0-e2 (e2 costlier), `snapkv` on e0, e1 and e3 (e3 only its own, and costly), with one
    failed turn; a second model's `full` that must not serve as the first model's baseline."""
    rows = []
    for episode, kv, ttft, prefill in (("e0", 100, 10.0, 90.0), ("e1", 100, 10.0, 90.0), ("e2", 400, 50.0, 950.0)):
        rows += [kv_row("full", episode, turn, 1.0, kv, ttft, prefill) for turn in (0, 1)]
    rows += [kv_row("snapkv", "e0", 0, 1.0, 25, 5.0, 45.0), kv_row("snapkv", "e0", 1, 0.0, 25, 5.0, 45.0),
             kv_row("snapkv", "e1", 0, 1.0, 25, 5.0, 45.0),
             kv_row("snapkv", "e1", 1, None, 0, float("nan"), 45.0, error="RuntimeError: boom"),
             kv_row("snapkv", "e3", 0, 0.0, 1000, 500.0, 900.0), kv_row("snapkv", "e3", 1, 1.0, 1000, 500.0, 900.0)]
    rows += [kv_row("full", episode, turn, kv=1, model="m2") for episode in ("e0", "e1") for turn in (0, 1)]
    return rows


def cell_of(cells, **key):
    found = [c for c in cells if all(getattr(c, k) == v for k, v in key.items())]
    assert len(found) == 1, (key, found)
    return found[0]


def test_kv_ratios_use_only_items_both_methods_scored(tmp_path):
    board = aggregate([write_atomic(matched_rows(), tmp_path / "kv.parquet")])
    snapkv = cell_of(board.kv, method="snapkv")
    # items both scored: e0/0, e0/1, e1/0 (e1/1 failed, e2 only full, e3 only snapkv)
    assert snapkv.matched == 3
    assert snapkv.kv_ratio == pytest.approx(75 / 300)
    # request TTFT: turn 0 pays the context prefill (multi-turn): snapkv 50, 5, 50; full 100, 10, 100
    assert snapkv.ttft_ratio == pytest.approx(105 / 210)
    assert (snapkv.n, snapkv.errors) == (5, 1)
    assert snapkv.kv_bytes == pytest.approx((3 * 25 + 2 * 1000) / 5)
    full = cell_of(board.kv, method="full", model="m")
    assert (full.kv_ratio, full.ttft_ratio, full.matched) == (1.0, 1.0, 6)
    assert cell_of(board.kv, method="full", model="m2").kv_ratio == 1.0
    assert snapkv.family == "multiturn" and snapkv.compression == "query-agnostic"


def test_kv_scores_and_intervals_are_the_episode_bootstrap_of_the_items(tmp_path):
    """Score, interval, n and costs of a cell computed by hand from its rows: one cluster per (seed, episode), the
    run that wrote a row playing no part (two runs of one episode are one episode)."""
    rng = np.random.default_rng(3)
    rows = [kv_row(method, f"e{e}", t, float(rng.random() < 0.6 + 0.1 * e % 3), ttft=float(rng.gamma(3)),
                   prefill=float(rng.gamma(9)), run_id=f"run-{method}-{e % 2}")
            for method in ("full", "snapkv") for e in range(9) for t in range(3)]
    board = aggregate([write_atomic(rows, tmp_path / "kv.parquet")])
    assert len(board.kv) == 2
    for method in ("full", "snapkv"):
        mine = [row for row in rows if row["method"] == method]
        cell = cell_of(board.kv, method=method)
        expected = cluster_bootstrap_ci([row["score"] for row in mine], [f"None/{row['episode_id']}" for row in mine])
        assert (cell.score, cell.low, cell.high) == pytest.approx(expected)
        assert (cell.n, cell.errors) == (27, 0) and cell.low < cell.score < cell.high
        request = [row["ttft_ms"] + (row["prefill_ms"] if row["turn"] == 0 else 0.0) for row in mine]
        assert cell.request_ttft_ms == pytest.approx(np.mean(request))
        assert cell.question_ttft_ms == pytest.approx(np.mean([row["ttft_ms"] for row in mine]))
        assert cell.kv_bytes == pytest.approx(100)


def test_cluster_intervals_equal_the_one_cell_bootstrap():
    rng = np.random.default_rng(0)
    cells, sums, counts, expected = [], [], [], []
    for index, clusters in enumerate([0, 1, 2, 5, 5, 13]):
        scores, labels = [], []
        for cluster in range(clusters):
            size = int(rng.integers(1, 4))
            values = rng.random(size)
            scores += list(values)
            labels += [f"run/e{cluster:02d}"] * size
            cells.append(index)
            sums.append(values.sum())
            counts.append(size)
        expected.append(cluster_bootstrap_ci(scores, labels))
    mean, low, high = cluster_intervals(np.array(cells), np.array(sums), np.array(counts, float), 6)
    np.testing.assert_allclose(np.c_[mean, low, high], np.array(expected), rtol=1e-12)


def test_rate_intervals_are_wilson_and_f1_intervals_cover_the_estimate():
    assert wilson_interval(10, 100) == pytest.approx((0.0552, 0.1744), abs=5e-4)  # the textbook value
    low, high = wilson_interval(0, 20)
    assert low == 0.0 and 0.1 < high < 0.2  # defined at 0%, unlike the normal approximation
    assert all(np.isnan(wilson_interval(1, 1)))  # one request: no interval, never a zero-width one
    counts = np.array([[50, 10, 20, 20], [5, 0, 3, 2], [0, 0, 0, 1]])
    bounds = f1_intervals(counts)
    for row, (tp, fp, fn, _) in enumerate(counts[:2]):
        f1 = 2 * tp / (2 * tp + fp + fn)
        assert bounds[row, 0] < f1 <= bounds[row, 1] and bounds[row, 1] - bounds[row, 0] < 0.6
    assert np.isnan(bounds[2]).all()


def semantic_rows() -> list[dict]:
    """Category a: TP TP FP FN; category b: TN TP(stale) FN TN; plus warm-up and a failed request, left out."""
    rows = [semantic_row(0, "TP", warmup=True), semantic_row(1, "FP", error="TimeoutError: store")]
    outcomes = [("a", "TP"), ("a", "TP"), ("a", "FP"), ("a", "FN"), ("b", "TN"), ("b", "TP"), ("b", "FN"), ("b", "TN")]
    for turn, (category, outcome) in enumerate(outcomes, start=2):
        rows.append(semantic_row(turn, outcome, category, stale=turn == 7))
    for threshold, outcomes in ((0.9, "TP FN FN TN TN FP TN TN"), (0.7, "TP TP FP FP TP TN FN FP")):
        rows += [semantic_row(t, o, "a", threshold=threshold) for t, o in enumerate(outcomes.split())]
    return rows


def test_semantic_rates_by_hand_and_as_cachebench_show_scores_them(tmp_path):
    path = write_atomic(semantic_rows(), tmp_path / "semantic.parquet")
    board = aggregate([path])
    entry = next(e for e in board.semantic if e.cell.key["method_params"] == '{"threshold":0.8}')
    overall = entry.overall
    assert overall.category == "all" and entry.cell.errors == 1
    r = overall.rates
    assert (r.n, r.tp, r.fp, r.fn, r.tn, r.stale) == (8, 3, 1, 2, 2, 1)
    assert (r.hit_rate, r.error_rate, r.precision, r.recall, r.stale_rate) == pytest.approx((0.5, 0.125, 0.75, 0.6,
                                                                                              0.125))
    assert r.f1 == pytest.approx(2 * 0.75 * 0.6 / 1.35)
    assert overall.lookup_p50 == pytest.approx(np.percentile(np.arange(3, 11), 50))
    by_name = {s.category: s.rates for s in entry.cell.categories}
    assert (by_name["a"].hit_rate, by_name["a"].error_rate, by_name["a"].recall) == pytest.approx((0.75, 0.25, 2 / 3))
    assert (by_name["b"].hit_rate, by_name["b"].precision, by_name["b"].stale_rate) == pytest.approx((0.25, 1, 0.25))
    low, high = overall.intervals["error_rate"]
    assert low <= 0.125 <= high
    reference = summarize_semantic(read_results([path]))
    assert len(reference) == len(board.semantic)
    for expected in reference:
        cell = next(e.cell for e in board.semantic
                    if {**e.cell.key, "family": None} == {**expected.key, "family": None})
        assert [s.category for s in cell.categories] == [s.category for s in expected.categories]
        for mine, theirs in zip(cell.categories, expected.categories, strict=True):
            assert mine.rates == theirs.rates
            assert mine.lookup_p50 == pytest.approx(theirs.lookup_p50)
            assert mine.intervals.keys() == theirs.intervals.keys()
    group = ("semantic.stream", "emb", "stream")
    assert board.curves[group] == tradeoff(reference)
    points, _ = board.curves[group]["threshold"]
    assert len(points) == 3 and points == sorted(points)


def test_random_weights_are_flagged_and_kept_off_the_front(tmp_path):
    rows = [kv_row("full", f"e{e}", 0, 0.9, model="big", model_weights="random") for e in range(3)]
    rows += [kv_row("snapkv", f"e{e}", 0, 1.0, 10, model="big", model_weights="random") for e in range(3)]
    rows += [kv_row("full", f"e{e}", 0, 0.8) for e in range(3)]
    rows += [kv_row("snapkv", f"e{e}", 0, 0.5, 25) for e in range(3)]
    board = aggregate([write_atomic(rows, tmp_path / "kv.parquet")])
    random = [c for c in board.kv if c.model == "big"]
    assert all(c.random_weights and not c.pareto for c in random)
    assert cell_of(board.kv, model="big", method="snapkv").kv_ratio == pytest.approx(0.1)
    pretrained = [c for c in board.kv if c.model == "m"]
    assert not any(c.random_weights for c in pretrained) and all(c.pareto for c in pretrained)
    assert random[0].provenance.model_weights == ("random",)
    html = build_site([tmp_path / "kv.parquet"], tmp_path / "site").read_text()
    assert "big (random weights)" in html


def test_pareto_front_keeps_points_nothing_beats():
    points = [(1.0, 0.9), (0.5, 0.8), (0.5, 0.7), (0.25, 0.8), (0.1, 0.2), (0.6, 0.95)]
    assert pareto_front(points) == [False, False, False, True, True, True]


def hostile_rows() -> list[dict]:
    """Every string a user controls carries markup: task, method, params, model, category, prediction..."""
    rows = [kv_row(method, f"e{e}", 0, 0.5, 100 if method == "full" else 30, task=f"multiturn.{HOSTILE}",
                   model=HOSTILE, prediction=HOSTILE, hardware=HOSTILE, run_id=HOSTILE, category=HOSTILE,
                   git_sha=ATTRIBUTE_BREAK,
                   method_params="{}" if method == "full" else f'{{"note":"{HOSTILE}{ATTRIBUTE_BREAK}"}}')
            for method in ("full", HOSTILE) for e in range(3)]
    rows += [semantic_row(t, o, HOSTILE, method=HOSTILE, threshold=x, prediction=HOSTILE, task=f"semantic.{HOSTILE}",
                          model=HOSTILE) for x in (0.8, 0.9) for t, o in enumerate(["TP", "FP", "FN", "TN", "TP"])]
    return rows


def test_hostile_strings_are_escaped_everywhere(tmp_path):
    write_atomic(hostile_rows(), tmp_path / HOSTILE.replace("/", "_") / "rows.parquet")
    html = build_site([tmp_path], tmp_path / "site").read_text()
    assert not re.search(r"<script>\s*alert", html, re.IGNORECASE)
    assert "<img" not in html and "onerror=alert" not in html.replace("onerror=alert(2)&gt;", "")
    assert html.count("<script") == 1  # the page's own
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    for shown in (f"multiturn.{escaped}", f"semantic.{escaped}", escaped):
        assert shown in html
    assert "<svg" in html and html.count(escaped) > 20  # tables, options, provenance and SVG legends and tooltips
    script = re.search(r"<script>(.*?)</script>", html, re.DOTALL).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    policy = markup.unescape(re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', html).group(1))
    assert f"script-src 'sha256-{digest}';" in policy and "default-src 'none'" in policy  # only the page's script
    assert "javascript:" not in html


def test_many_files_and_folders_and_provenance(tmp_path):
    early = [kv_row("full", f"e{e}", 0, created_at=datetime(2026, 1, 1, tzinfo=UTC), run_id="r1") for e in range(2)]
    late = [kv_row("full", f"e{e}", 0, created_at=datetime(2026, 2, 1, tzinfo=UTC), run_id="r2",
                   hardware="NVIDIA H100", git_sha="def5678") for e in range(2, 4)]
    first = write_atomic(early, tmp_path / "a" / "deep" / "one.parquet")
    second = write_atomic(late, tmp_path / "b" / "two.parquet")
    write_atomic(semantic_rows(), tmp_path / "a" / "semantic.parquet")
    board = aggregate([tmp_path / "a", second, first])  # `first` named again: still read once
    assert board.rows == 4 + len(semantic_rows()) and set(board.sources) == {first, second,
                                                                              tmp_path / "a" / "semantic.parquet"}
    full = cell_of(board.kv, method="full")
    origin = full.provenance
    assert (full.n, origin.rows, origin.run_ids, origin.sources) == (4, 4, ("r1", "r2"), (first, second))
    assert origin.hardware == ("NVIDIA H100", "test cpu x2") and origin.git_shas == ("abc1234", "def5678")
    assert (origin.first_run, origin.last_run) == (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC))
    page = build_site([tmp_path / "a", second], tmp_path / "out" / "site")
    html = page.read_text()
    assert "../" not in html and str(first) in html and str(second) in html  # published copies, original names
    assert "2026-01-01 00:00 UTC – 2026-02-01 00:00 UTC" in html


def test_older_schema_versions_are_read_with_missing_columns_as_null(tmp_path):
    table = pa.Table.from_pylist(matched_rows(), schema=SCHEMA)
    old = table.drop_columns(list(UPGRADABLE["1"]))  # what version 1 lacked
    pq.write_table(old.replace_schema_metadata({METADATA_KEY: b"1"}), tmp_path / "v1.parquet")
    board = aggregate([tmp_path / "v1.parquet"])
    assert {c.compression for c in board.kv} == {""} and not board.semantic
    assert cell_of(board.kv, method="snapkv").kv_ratio == pytest.approx(0.25)


def usage_error(call) -> str:
    with pytest.raises(UsageError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message and message.strip() == message
    return message


def test_bad_input_is_a_one_line_usage_error(tmp_path):
    good = write_atomic(matched_rows(), tmp_path / "good.parquet")
    out = tmp_path / "site"
    assert "no result files" in usage_error(lambda: build_site([], out))
    assert "no such results file" in usage_error(lambda: build_site([tmp_path / "missing.parquet"], out))
    (tmp_path / "empty").mkdir()
    assert "no .parquet result files" in usage_error(lambda: build_site([tmp_path / "empty"], out))
    junk = tmp_path / "junk.parquet"
    junk.write_text("not parquet\nat all\n")
    assert "not a readable Parquet file" in usage_error(lambda: build_site([good, junk], out))
    foreign = tmp_path / "foreign.parquet"
    pq.write_table(pa.table({"x": [1]}), foreign)
    assert "not a cachebench result file" in usage_error(lambda: build_site([foreign], out))
    future = tmp_path / "future.parquet"
    pq.write_table(pa.table({"x": [1]}).replace_schema_metadata({METADATA_KEY: b"99"}), future)
    assert "schema version 99" in usage_error(lambda: build_site([future], out))
    damaged = tmp_path / "damaged.parquet"
    data = bytearray(good.read_bytes())
    footer = int.from_bytes(data[-8:-4], "little") + 8
    data[4:len(data) - footer] = b"\xff" * (len(data) - footer - 4)  # pages garbage, footer intact
    damaged.write_bytes(bytes(data))
    assert f"{damaged}: not a readable Parquet file" in usage_error(lambda: build_site([good, damaged], out))
    taken = tmp_path / "taken"
    taken.write_text("a file")
    assert "exists and is not a directory" in usage_error(lambda: build_site([good], taken))
    assert not out.exists()
    assert build_site([good], out) == out / "index.html"


def test_partial_runs_are_marked_in_the_table_and_the_provenance(tmp_path):
    """A killed run's checkpoint (run_complete false) is marked wherever its cells appear; complete runs are not."""
    rows = matched_rows()
    partial = [row for row in rows if row["method"] == "snapkv"]
    complete = [row for row in rows if row["method"] != "snapkv"]
    write_atomic(partial, tmp_path / "rows" / "killed.parquet", planned=12, complete=False)
    write_atomic(complete, tmp_path / "rows" / "whole.parquet")
    board = aggregate([tmp_path / "rows"])
    assert cell_of(board.kv, method="snapkv").provenance.partial_runs == ("run-snapkv",)
    assert cell_of(board.kv, method="full", model="m").provenance.partial_runs == ()
    page = build_site([tmp_path / "rows"], tmp_path / "site").read_text()
    assert page.count(">snapkv (partial)<") == 1 and ">full (partial)<" not in page
    assert "run-snapkv: killed or interrupted before the end" in page


def test_chart_axes_fit_the_data_and_draw_intervals_only_where_defined():
    """Scores of 0.05-0.14 get an axis of about that range; a point without an interval gets no error bar."""
    from cachebench.leaderboard.plots import Point, Series, fit_ticks, scatter, style_for

    ticks = fit_ticks([0.07, 0.12, 0.05, 0.14])
    assert ticks[0] <= 0.05 and ticks[-1] >= 0.14 and ticks[-1] - ticks[0] <= 0.2  # not 0 to 1
    steps = {round(ticks[i + 1] - ticks[i], 9) for i in range(len(ticks) - 1)}
    assert len(steps) == 1 and 3 <= len(ticks) <= 8
    assert fit_ticks([0.0, 0.004], 0.0, 1.0)[0] == 0.0  # padding never takes a rate below 0
    assert fit_ticks([0.97, 1.0], 0.0, 1.0)[-1] == 1.0
    assert fit_ticks([2.0, 3.5])[-1] >= 3.5  # unbounded above: ratios may exceed 1
    points = [Point(0.25, 0.1, "a", y_interval=(0.05, 0.15)), Point(0.5, 0.12, "b", y_interval=(0.08, 0.16)),
              Point(0.1, 0.07, "c", y_interval=(float("nan"), float("nan")))]
    svg = str(scatter("t", "s", "x", "y", [Series("sweep", style_for(0), points),
                                           Series("alone", style_for(1), [Point(1.0, 0.09, "d")])]))
    assert svg.count('class="errorbar"') == 2  # the NaN interval (one episode) draws none
    assert svg.count('class="method-line"') == 1 + 1  # the sweep's line and its legend swatch; one point: no line
    line = re.search(r'class="method-line" points="([^"]+)"', svg).group(1).split()
    xs = [float(pair.split(",")[0]) for pair in line]
    assert len(xs) == 3 and xs == sorted(xs)


def test_linked_result_files_are_published_inside_the_site(tmp_path):
    """Two `rows.parquet` of different folders: both copied into site/data under distinct names, linked there."""
    from pathlib import Path

    first = write_atomic(matched_rows(), tmp_path / "a" / "rows.parquet")
    second = write_atomic(semantic_rows(), tmp_path / "b" / "rows.parquet")
    site = tmp_path / "out" / "site"
    html = build_site([tmp_path / "a", tmp_path / "b"], site).read_text()
    links = dict(re.findall(r'<a href="([^"#][^"]*)">([^<]*)</a>', html))
    assert set(links.values()) == {str(first), str(second)}  # shown as the paths given
    assert len(set(links)) == 2 and all(href.startswith("data/") and ".." not in href for href in links)
    for href, text in links.items():
        assert (site / href).read_bytes() == Path(markup.unescape(text)).read_bytes()
    build_site([tmp_path / "a", tmp_path / "b"], site)  # a rebuild replaces the same names
    assert sorted(p.name for p in (site / "data").iterdir()) == sorted(href.split("/")[-1] for href in links)


def test_the_published_leaderboard_is_built_from_the_committed_sweep_results():
    """leaderboard/ (README: `cachebench leaderboard results/sweeps results/benchmarks --out leaderboard`) links
    only inside itself, and its data files are exactly the committed benchmark results, so every figure on it is
    regenerable from committed rows."""
    repo = Path(__file__).resolve().parent.parent
    site = repo / "leaderboard"
    folders = [repo / "results" / "sweeps", repo / "results" / "benchmarks"]
    page = (site / "index.html").read_text(encoding="utf-8")
    links = set(re.findall(r'href="(data/[^"#]+)"', page))
    assert links and all(".." not in link and (site / link).is_file() for link in links)
    published = {hashlib.sha256((site / link).read_bytes()).hexdigest() for link in links}
    committed = {hashlib.sha256(path.read_bytes()).hexdigest() for folder in folders
                 for path in folder.rglob("*.parquet")}
    assert published == committed, "refresh: cachebench leaderboard results/sweeps results/benchmarks --out leaderboard"
    assert {path.name for path in (site / "data").iterdir()} == {link.split("/", 1)[1] for link in links}
    assert f"{read_results(folders).num_rows:,} rows" in page
    # and all of it is committed: a result file or a page that .gitignore keeps out of the repository is lost
    kept_out = subprocess.run(["git", "-C", str(repo), "check-ignore", "--no-index", str(site / "index.html"),
                               *map(str, folders), *(str(site / link) for link in links)],
                              capture_output=True, text=True)
    assert kept_out.returncode in (1, 128) and not kept_out.stdout, f"ignored by git: {kept_out.stdout}"
