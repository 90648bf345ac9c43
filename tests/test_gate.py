"""`cachebench gate`: synthetic result files for each rule of the verdict, then the real embedded model through
the real command line (an unchanged rerun passes, a broken snapkv fails and is named)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from filelock import FileLock

from cachebench.baselines.kv.snapkv import SnapKV, SnapKVParams
from cachebench.engine.session import LayerCall
from cachebench.errors import UsageError
from cachebench.eval_run import EvalRequest, run_eval
from cachebench.gate import GateOptions, gate_command, paired_bootstrap, render_markdown, run_gate, to_json
from cachebench.results import read_results, write_atomic
from cachebench.taskspec import SEMANTIC_METRIC

SNAP = '{"budget":null,"kernel":7,"pooling":"avg","ratio":0.5,"window":32}'
H2O = '{"budget":null,"ratio":0.5}'


def base_scores(episodes: int = 12, turns: int = 4, seed: int = 1) -> np.ndarray:
    """Scores in [0.4, 1.0], so that a 0.3 drop stays a valid score."""
    return 0.4 + 0.6 * np.random.default_rng(seed).random((episodes, turns))


def kv_rows(scores: np.ndarray, method: str = "snapkv", params: str = SNAP, task: str = "multiturn.passkey",
            ttft_ms: float = 50.0, prefill_ms: float = 200.0, kv_bytes: int = 1000, errors: tuple = ()) -> list[dict]:
    """One row per (episode, turn) of a KV cell; `errors` lists (episode, turn) pairs that failed."""
    rows = []
    for episode, turn in np.ndindex(scores.shape):
        failed = (episode, turn) in errors
        rows.append({
            "run_id": "r", "seed": 0, "task": task, "method": method, "method_params": params, "model": "M",
            "mode": "multi-turn", "compression": "query-agnostic", "episode_id": f"passkey-0-{episode}",
            "turn": turn, "metric": "first_int", "score": None if failed else float(scores[episode, turn]),
            "prefill_ms": prefill_ms, "ttft_ms": ttft_ms, "kv_bytes": kv_bytes,
            "error": "RuntimeError: boom" if failed else None,
        })
    return rows


def semantic_rows(scores: np.ndarray, warmup: int = 0, warmup_score: float = 1.0) -> list[dict]:
    """A semantic stream: `warmup` leading warm-up requests, then one request per score."""
    rows = []
    for position in range(warmup + len(scores)):
        in_warmup = position < warmup
        rows.append({
            "run_id": "s", "seed": 0, "task": "semantic.stream", "method": "gptcache", "method_params": "{}",
            "model": "all-MiniLM-L6-v2", "mode": "stream", "episode_id": f"r{position:05d}", "turn": position,
            "metric": SEMANTIC_METRIC, "score": warmup_score if in_warmup else float(scores[position - warmup]),
            "warmup": in_warmup, "hit": True, "outcome": "TP", "lookup_ms": 1.0,
        })
    return rows


def write(directory: Path, *row_lists: list[dict]) -> Path:
    write_atomic([row for rows in row_lists for row in rows], directory / "run.parquet")
    return directory


@pytest.fixture
def three_cells() -> dict[str, np.ndarray]:
    return {"snap": base_scores(seed=1), "h2o": base_scores(seed=2), "other": base_scores(seed=3)}


def baseline_dir(tmp_path: Path, cells: dict[str, np.ndarray]) -> Path:
    return write(tmp_path / "base", kv_rows(cells["snap"]), kv_rows(cells["h2o"], "h2o", H2O),
                 kv_rows(cells["other"], task="multiturn.kv"))


def gate(tmp_path: Path, cells: dict[str, np.ndarray], candidate: dict[str, np.ndarray], **options) -> object:
    cand = write(tmp_path / "cand", kv_rows(candidate["snap"]), kv_rows(candidate["h2o"], "h2o", H2O),
                 kv_rows(candidate["other"], task="multiturn.kv"))
    return run_gate([baseline_dir(tmp_path, cells)], [cand], GateOptions(**options))


def test_identical_runs_pass_with_every_cell_unchanged(tmp_path, three_cells):
    result = gate(tmp_path, three_cells, three_cells)
    assert result.passed
    assert [c.status for c in result.cells] == ["unchanged"] * 3
    for cell in result.cells:
        assert cell.matched == 48 and cell.clusters == 12 and cell.difference == 0 == cell.low == cell.high
        assert cell.ttft_ratio == 1.0 and cell.kv_ratio == 1.0 and not cell.failed
    report = render_markdown(result)
    assert report.startswith("### cachebench gate: PASS") and "Failing cells" not in report
    assert to_json(result)["passed"] is True


def test_a_large_drop_fails_and_names_the_cell(tmp_path, three_cells):
    dropped = three_cells["h2o"].copy()
    dropped[:11] -= 0.3  # 11 of 12 episodes
    result = gate(tmp_path, three_cells, {**three_cells, "h2o": dropped})
    assert not result.passed
    failing = result.failed_cells
    assert len(failing) == 1 and result.cells[0] is failing[0]  # failing cells come first
    cell = failing[0]
    assert cell.status == "regressed" and cell.key["method"] == "h2o" and cell.key["cell_params"] == H2O
    assert cell.difference == pytest.approx(-0.3 * 44 / 48)
    assert cell.high < -0.02 and cell.low < cell.difference < cell.high
    assert [c.status for c in result.cells[1:]] == ["unchanged", "unchanged"]

    report = render_markdown(result)
    assert report.startswith("### cachebench gate: FAIL")
    failing_table = report.split("#### Failing cells")[1].split("#### Other cells")[0]
    assert f"| regressed | multiturn.passkey | h2o | `{H2O}` |" in failing_table
    assert f"{cell.difference:+.3f} [{cell.low:+.3f}, {cell.high:+.3f}]" in failing_table
    assert "48 (12 clusters)" in failing_table and "snapkv" not in failing_table

    data = json.loads(json.dumps(to_json(result)))  # plain JSON, NaN-free
    assert data["passed"] is False and "FAIL" in data["summary"]
    failed = [c for c in data["cells"] if c["failed"]]
    assert len(failed) == 1
    assert failed[0]["key"] == {"track": "kv", "task": "multiturn.passkey", "method": "h2o", "cell_params": H2O,
                                "model": "M", "model_weights": None, "dtype": None, "mode": "multi-turn",
                                "compression": "query-agnostic", "context_length": None}
    assert failed[0]["status"] == "regressed" and failed[0]["matched"] == 48


def test_a_drop_within_tolerance_passes(tmp_path, three_cells):
    result = gate(tmp_path, three_cells, {**three_cells, "snap": three_cells["snap"] - 0.01})
    assert result.passed
    snap = next(c for c in result.cells if c.key["method"] == "snapkv" and c.key["task"] == "multiturn.passkey")
    assert snap.status == "unchanged" and snap.high < 0  # a real drop, but within the 0.02 tolerance
    assert gate(tmp_path, three_cells, {**three_cells, "snap": three_cells["snap"] - 0.01}, tolerance=0.005).passed \
        is False


def test_a_drop_on_very_few_items_is_not_significant(tmp_path, three_cells):
    few = three_cells["snap"].copy()
    few[0, :2] = 0.0  # 2 of 48 items lose everything: the mean drops by more than the tolerance, by chance alone
    result = gate(tmp_path, three_cells, {**three_cells, "snap": few})
    snap = next(c for c in result.cells if c.key["method"] == "snapkv" and c.key["task"] == "multiturn.passkey")
    assert snap.difference < -0.02 and snap.high >= -0.02
    assert result.passed and snap.status == "unchanged"


def test_improvements_are_reported_and_pass(tmp_path, three_cells):
    result = run_gate([write(tmp_path / "low", kv_rows(three_cells["snap"] - 0.3))],
                      [write(tmp_path / "high", kv_rows(three_cells["snap"]))])
    assert result.passed and result.cells[0].status == "improved" and result.cells[0].low > 0.02
    assert "| improved | multiturn.passkey | snapkv |" in render_markdown(result)
    assert "1 improved" in render_markdown(result)


def test_missing_and_new_cells(tmp_path, three_cells):
    base = baseline_dir(tmp_path, three_cells)
    cand = write(tmp_path / "cand", kv_rows(three_cells["snap"]), kv_rows(three_cells["h2o"], "h2o", H2O),
                 kv_rows(three_cells["h2o"], "pyramidkv", H2O))  # multiturn.kv gone, pyramidkv new
    result = run_gate([base], [cand])
    assert not result.passed
    by_status = {c.status: c for c in result.cells}
    assert by_status["missing"].failed and by_status["missing"].key["task"] == "multiturn.kv"
    assert by_status["missing"].baseline_only == 48
    assert not by_status["new"].failed and by_status["new"].key["method"] == "pyramidkv"
    report = render_markdown(result)
    assert "| missing | multiturn.kv | snapkv |" in report.split("#### Other cells")[0]
    assert "| new | multiturn.passkey | pyramidkv |" in report.split("#### Other cells")[1]
    assert run_gate([base], [cand], GateOptions(allow_missing=True)).passed


def test_unmatched_and_failed_items_are_counted_not_compared(tmp_path, three_cells):
    scores = three_cells["snap"]
    base = write(tmp_path / "base", kv_rows(scores, errors=((0, 0),)))
    cand = write(tmp_path / "cand", kv_rows(scores[:10], errors=((1, 1),)))  # two episodes (8 of 48 items) fewer
    cell = run_gate([base], [cand], GateOptions(allow_new_errors=True, max_missing=0.2)).cells[0]
    assert (cell.matched, cell.baseline_items, cell.baseline_only, cell.candidate_only) == (38, 48, 8, 0)
    assert (cell.baseline_errors, cell.candidate_errors, cell.new_errors) == (1, 1, 1)
    assert cell.status == "unchanged" and not cell.failed
    failed = run_gate([base], [cand], GateOptions(max_missing=0.2)).cells[0]
    assert failed.failed and failed.reasons == ["1 item(s) fail only in the candidate"]
    strict = run_gate([base], [cand]).cells[0]  # by default every baseline item must be in the candidate
    assert strict.reasons == ["8 of 48 baseline items not in the candidate (more than --max-missing 0)",
                              "1 item(s) fail only in the candidate"]

    everything_fails = write(tmp_path / "broken", kv_rows(scores, errors=tuple(np.ndindex(scores.shape))))
    broken = run_gate([base], [everything_fails])
    assert not broken.passed and broken.cells[0].status == "incomparable" and broken.cells[0].new_errors == 47
    assert broken.cells[0].reasons == ["cannot judge: no item scored without error on both sides",
                                       "47 item(s) fail only in the candidate"]
    assert run_gate([base], [everything_fails], GateOptions(allow_missing=True, allow_new_errors=True)).passed \
        is False  # nothing to judge is a failure whatever is allowed


def test_ttft_and_kv_ratio_checks(tmp_path, three_cells):
    scores = three_cells["snap"]
    base = write(tmp_path / "base", kv_rows(scores))
    slow = write(tmp_path / "slow", kv_rows(scores, ttft_ms=100.0, prefill_ms=400.0, kv_bytes=3000))
    assert run_gate([base], [slow]).passed  # checks apply only when asked for
    cell = run_gate([base], [slow], GateOptions(max_ttft_ratio=1.5)).cells[0]
    # request TTFT: turn 0 waits for the context prefill too: (400 + 100 + 3 * 100) / (200 + 50 + 3 * 50)
    assert cell.ttft_ratio == pytest.approx(2.0) and cell.failed and cell.status == "unchanged"
    assert cell.reasons == ["TTFT ×2.00 > 1.5"]
    assert run_gate([base], [slow], GateOptions(max_ttft_ratio=2.5)).passed
    cell = run_gate([base], [slow], GateOptions(max_kv_ratio=2)).cells[0]
    assert cell.kv_ratio == pytest.approx(3.0) and cell.failed and cell.reasons == ["KV bytes ×3.00 > 2"]
    assert run_gate([base], [slow], GateOptions(max_kv_ratio=3.5, max_ttft_ratio=2.5)).passed


def test_semantic_rows_skip_warmup_and_resample_requests(tmp_path):
    scores = np.ones(200)
    base = write(tmp_path / "base", semantic_rows(scores, warmup=50))
    cand = write(tmp_path / "cand", semantic_rows(scores, warmup=50, warmup_score=0.0))  # only warm-up differs
    cell = run_gate([base], [cand], GateOptions(max_ttft_ratio=1.0, max_kv_ratio=1.0)).cells[0]
    assert cell.status == "unchanged" and not cell.failed and cell.matched == cell.clusters == 200
    assert np.isnan(cell.ttft_ratio) and np.isnan(cell.kv_ratio)  # no TTFT or KV on semantic rows: not checked
    wrong = scores.copy()
    wrong[::4] = 0.0  # a quarter of the requests now served a wrong response
    result = run_gate([base], [write(tmp_path / "wrong", semantic_rows(wrong, warmup=50))])
    assert not result.passed and result.cells[0].status == "regressed"
    assert result.cells[0].difference == pytest.approx(-0.25)


def test_paired_bootstrap_resamples_clusters_reproducibly():
    differences = np.repeat([-0.5, -0.4, -0.6, 0.0], 3)
    clusters = np.repeat(["a", "b", "c", "d"], 3)
    first = paired_bootstrap(differences, clusters, seed=7)
    assert first == paired_bootstrap(differences, clusters, seed=7)
    assert first[0] == pytest.approx(-0.375) and first[1] < first[0] < first[2]
    by_item = paired_bootstrap(differences, np.arange(12), seed=7)
    assert by_item[2] - by_item[1] < first[2] - first[1]  # items of one cluster move together: a wider interval
    assert np.isnan(paired_bootstrap([-1.0, -1.0], ["a", "a"])[1])  # one cluster: no interval


def test_a_single_episode_cannot_be_judged_and_fails(tmp_path):
    """One episode on both sides gives no interval; that used to pass as "not judged", and now fails the cell."""
    scores = np.ones((1, 4))
    base = write(tmp_path / "base", kv_rows(scores))
    result = run_gate([base], [write(tmp_path / "cand", kv_rows(scores * 0))])
    cell = result.cells[0]
    assert not result.passed and cell.failed and cell.status == "incomparable"
    assert cell.difference == -1 and np.isnan(cell.high) and (cell.matched, cell.clusters) == (4, 1)
    assert cell.reasons == ["cannot judge: 1 cluster (episode) matched, need at least 2"]
    assert "cannot judge: 1 cluster (episode) matched, need at least 2" in render_markdown(result)
    same = run_gate([base], [base])  # even an identical rerun: one episode is no evidence either way
    assert not same.passed and same.cells[0].reasons == cell.reasons


def test_gate_command_prints_the_report_writes_json_and_returns_the_exit_code(tmp_path, three_cells, capsys):
    base = write(tmp_path / "base", kv_rows(three_cells["snap"]))
    worse = write(tmp_path / "worse", kv_rows(three_cells["snap"] - 0.3))
    assert gate_command([base], [base], GateOptions()) == 0
    assert capsys.readouterr().out.startswith("### cachebench gate: PASS")
    report = tmp_path / "reports" / "gate.json"
    assert gate_command([base], [worse], GateOptions(), report) == 1
    assert capsys.readouterr().out.startswith("### cachebench gate: FAIL")
    assert json.loads(report.read_text())["cells"][0]["status"] == "regressed"
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match=r"--json .*: cannot write"):
        gate_command([base], [worse], GateOptions(), tmp_path / "file" / "gate.json")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"tolerance": -0.1}, "--tolerance must be a number >= 0"),
        ({"confidence": 1.0}, "--confidence must be between 0 and 1"),
        ({"max_ttft_ratio": 0.0}, "--max-ttft-ratio must be a number > 0"),
        ({"max_kv_ratio": float("nan")}, "--max-kv-ratio must be a number > 0"),
        ({"resamples": 10}, "--resamples must be at least 100"),
        ({"max_missing": 1.01}, "--max-missing must be a fraction between 0 and 1"),
    ],
)
def test_bad_options_are_one_line_usage_errors(tmp_path, three_cells, options, message):
    base = write(tmp_path / "base", kv_rows(three_cells["snap"]))
    with pytest.raises(UsageError, match=message) as info:
        run_gate([base], [base], GateOptions(**options))
    assert "\n" not in str(info.value)


def test_unusable_inputs_are_one_line_usage_errors(tmp_path, three_cells):
    base = write(tmp_path / "base", kv_rows(three_cells["snap"]))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.parquet").write_text("not parquet")
    empty = write(tmp_path / "empty", [])
    other_task = write(tmp_path / "other", kv_rows(three_cells["snap"], task="multiturn.kv"))
    other_seed = write(tmp_path / "seed", [{**row, "seed": 1} for row in kv_rows(three_cells["snap"])])
    cases = [
        ([tmp_path / "nope"], "--candidate: no such results file or directory"),
        ([tmp_path / "junk"], "not a readable Parquet file"),
        ([empty], "--candidate: no result rows in"),
        ([other_task], "share no cell"),
        ([other_seed], "share no item (seed, episode_id, turn)"),
    ]
    for candidate, message in cases:
        with pytest.raises(UsageError) as info:
            run_gate([base], candidate)
        assert message in str(info.value) and "\n" not in str(info.value), str(info.value)
    with pytest.raises(UsageError, match="--baseline: no such results file"):
        run_gate([tmp_path / "nope"], [base])


# --- checks that cannot be made fail, through the real command line ---------------------------------------------


def gate_cli(tmp_path: Path, base: Path, cand: Path, *args: str) -> tuple[int, str, dict]:
    """Run the real `cachebench gate` with `--json`; returns the exit code, the Markdown report and the JSON."""
    report = tmp_path / "gate.json"
    report.unlink(missing_ok=True)
    result = run_cli("gate", "--baseline", str(base), "--candidate", str(cand), "--json", str(report), *args)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, result.stdout, json.loads(report.read_text())


def only_cell(data: dict) -> dict:
    assert len(data["cells"]) == 1, data["cells"]
    return data["cells"][0]


def cell_named(data: dict, method: str) -> dict:
    return next(cell for cell in data["cells"] if cell["key"]["method"] == method
                and cell["key"]["task"] == "multiturn.passkey")


def partial_file(rows: list[dict], path: Path, planned: int, run_id: str) -> None:
    """A checkpoint of a run killed before the end: `rows` of `planned`, every row saying run_complete false."""
    write_atomic([{**row, "run_id": run_id} for row in rows], path, planned=planned, complete=False)


def test_a_collapsed_candidate_fails_and_names_the_cell(tmp_path):
    """One episode of eight left, every score 0: it used to pass as "one cluster, not judged"."""
    base = write(tmp_path / "base", kv_rows(base_scores(episodes=8)))
    cand = write(tmp_path / "cand", kv_rows(np.zeros((1, 4))))
    code, report, data = gate_cli(tmp_path, base, cand)
    cell = only_cell(data)
    assert code == 1 and data["passed"] is False and cell["failed"] is True and cell["status"] == "incomparable"
    assert (cell["baseline_items"], cell["baseline_only"], cell["matched"], cell["clusters"]) == (32, 28, 4, 1)
    assert cell["reasons"] == ["28 of 32 baseline items not in the candidate (more than --max-missing 0)",
                               "cannot judge: 1 cluster (episode) matched, need at least 2"]
    failing = report.split("#### Failing cells")[1]
    assert f"| incomparable | multiturn.passkey | snapkv | `{SNAP}` |" in failing
    assert "cannot judge: 1 cluster (episode) matched" in failing

    code, _, data = gate_cli(tmp_path, base, cand, "--allow-missing")  # missing items allowed, still nothing to judge
    assert code == 1 and only_cell(data)["reasons"] == ["cannot judge: 1 cluster (episode) matched, need at least 2"]


def test_missing_items_fail_beyond_max_missing(tmp_path):
    """Every baseline item must be in the candidate unless --max-missing or --allow-missing says otherwise."""
    scores = base_scores(episodes=4)
    base = write(tmp_path / "base", kv_rows(scores))
    one_of_four = write(tmp_path / "one", [row for row in kv_rows(scores) if row["turn"] != 3])
    three_of_four = write(tmp_path / "three", [row for row in kv_rows(scores) if row["turn"] == 0])

    code, _, data = gate_cli(tmp_path, base, one_of_four)
    cell = only_cell(data)
    assert code == 1 and (cell["baseline_items"], cell["baseline_only"], cell["matched"]) == (16, 4, 12)
    assert cell["reasons"] == ["4 of 16 baseline items not in the candidate (more than --max-missing 0)"]

    code, _, data = gate_cli(tmp_path, base, one_of_four, "--max-missing", "0.5")
    cell = only_cell(data)
    assert code == 0 and cell["status"] == "unchanged" and cell["reasons"] == []
    assert (cell["baseline_only"], cell["matched"], cell["clusters"]) == (4, 12, 4)
    assert data["options"]["max_missing"] == 0.5

    code, _, data = gate_cli(tmp_path, base, three_of_four, "--max-missing", "0.5")
    cell = only_cell(data)
    assert code == 1 and (cell["baseline_only"], cell["matched"], cell["clusters"]) == (12, 4, 4)
    assert cell["reasons"] == ["12 of 16 baseline items not in the candidate (more than --max-missing 0.5)"]

    code, _, data = gate_cli(tmp_path, base, three_of_four, "--allow-missing")
    assert code == 0 and only_cell(data)["baseline_only"] == 12 and only_cell(data)["reasons"] == []
    assert run_gate([base], [one_of_four], GateOptions(max_missing=0.25)).passed  # the fraction itself is allowed


def test_nan_and_infinite_scores_fail_the_cell(tmp_path):
    """A NaN score used to make the mean NaN, and a NaN mean never regressed: the cell passed unjudged."""
    scores = base_scores()
    broken = scores.copy()
    broken[0, 0] = broken[0, 1] = broken[5, 2] = np.nan
    broken[7, 3] = np.inf
    base = write(tmp_path / "base", kv_rows(scores))
    code, report, data = gate_cli(tmp_path, base, write(tmp_path / "cand", kv_rows(broken)))
    cell = only_cell(data)
    assert code == 1 and cell["failed"] is True
    counts = (cell["candidate_nonfinite"], cell["baseline_nonfinite"], cell["matched"], cell["clusters"])
    assert counts == (4, 0, 48, 12)
    assert cell["reasons"] == ["4 matched item(s) scored NaN or infinite in the candidate"]
    assert cell["difference"] == 0 and cell["low"] == 0  # the finite items are still compared
    assert "4 matched item(s) scored NaN or infinite in the candidate" in report.split("#### Failing cells")[1]

    reverse = run_gate([tmp_path / "cand"], [base]).cells[0]
    assert reverse.failed and reverse.reasons == ["4 matched item(s) scored NaN or infinite in the baseline"]
    all_nan = write(tmp_path / "nan", kv_rows(np.full((12, 4), np.nan)))
    nothing = run_gate([all_nan], [all_nan]).cells[0]
    assert nothing.failed and nothing.status == "incomparable" and nothing.clusters == 0
    assert nothing.reasons == ["48 matched item(s) scored NaN or infinite in the baseline",
                               "48 matched item(s) scored NaN or infinite in the candidate",
                               "cannot judge: no matched item with finite scores on both sides"]


def test_a_partial_candidate_run_fails_every_cell_it_has_rows_in(tmp_path, three_cells):
    """A killed run's missing rows may be exactly the ones that regressed, so it is refused unless --allow-partial,
    even in a cell where it happens to have every item."""
    base = baseline_dir(tmp_path, three_cells)
    killed = [*kv_rows(three_cells["snap"]), *kv_rows(three_cells["h2o"][:10], "h2o", H2O),
              *kv_rows(three_cells["h2o"][:1], "pyramidkv", H2O)]  # 92 of 144 rows: pyramidkv had just started
    partial_file(killed, tmp_path / "cand" / "killed.parquet", planned=144, run_id="killed")
    write_atomic(kv_rows(three_cells["other"], task="multiturn.kv"), tmp_path / "cand" / "done.parquet")
    cand = tmp_path / "cand"

    code, report, data = gate_cli(tmp_path, base, cand)
    partial = "candidate run killed is partial: 92 of 144 rows"
    assert code == 1 and data["partial"]["candidate"] == [{"run_id": "killed", "rows": 92, "planned": 144}]
    assert cell_named(data, "snapkv")["reasons"] == [partial]
    new = cell_named(data, "pyramidkv")  # a cell only the candidate has passes, unless a partial run wrote it
    assert new["status"] == "new" and new["failed"] is True and new["reasons"] == [partial]
    assert cell_named(data, "h2o")["reasons"] == [partial, "8 of 48 baseline items not in the candidate (more "
                                                  "than --max-missing 0)"]
    assert cell_named(data, "snapkv")["candidate_partial"] == data["partial"]["candidate"]
    other = next(cell for cell in data["cells"] if cell["key"]["task"] == "multiturn.kv")
    assert other["failed"] is False and other["candidate_partial"] == []  # a complete run's cell is judged as usual
    assert f"> Note: {partial}; its cells fail (--allow-partial judges them)." in report

    code, report, data = gate_cli(tmp_path, base, cand, "--allow-partial")  # missing items still count as missing
    assert code == 1 and [cell["key"]["method"] for cell in data["cells"] if cell["failed"]] == ["h2o"]
    assert cell_named(data, "h2o")["reasons"] == ["8 of 48 baseline items not in the candidate (more than "
                                                  "--max-missing 0)"]
    assert cell_named(data, "snapkv")["status"] == "unchanged" and cell_named(data, "snapkv")["matched"] == 48
    assert cell_named(data, "pyramidkv")["failed"] is False

    code, report, data = gate_cli(tmp_path, base, cand, "--allow-partial", "--max-missing", "0.2")
    assert code == 0 and data["passed"] is True
    assert data["notes"] == [f"{partial}; judged on the rows it has (--allow-partial)"]
    assert "candidate run killed partial (allowed)" in report


def test_a_partial_baseline_is_noted_not_failed(tmp_path, three_cells):
    """A partial baseline compares fewer items than planned: the verdict stands, but the report says so."""
    base = tmp_path / "base"
    partial_file(kv_rows(three_cells["snap"][:10]), base / "run.parquet", planned=48, run_id="killed")
    cand = write(tmp_path / "cand", kv_rows(three_cells["snap"]))
    code, report, data = gate_cli(tmp_path, base, cand)
    cell = only_cell(data)
    assert code == 0 and data["passed"] is True and cell["failed"] is False and cell["status"] == "unchanged"
    assert (cell["baseline_items"], cell["matched"], cell["candidate_only"]) == (40, 40, 8)
    assert data["partial"] == {"baseline": [{"run_id": "killed", "rows": 40, "planned": 48}], "candidate": []}
    assert cell["baseline_partial"] == data["partial"]["baseline"]
    note = "baseline run killed is partial: 40 of 48 rows; its cells are compared on the rows it has"
    assert data["notes"] == [note]
    assert f"> Note: {note}." in report and "baseline run killed partial" in report.split("#### Cells")[1]

    worse = write(tmp_path / "worse", kv_rows(three_cells["snap"] - 0.3))
    code, _, data = gate_cli(tmp_path, base, worse)  # a partial baseline still catches a regression
    assert code == 1 and only_cell(data)["status"] == "regressed" and data["notes"] == [note]


@pytest.mark.parametrize("value", ["-0.1", "1.5", "nan"])
def test_bad_max_missing_is_a_one_line_usage_error(tmp_path, three_cells, value):
    base = write(tmp_path / "base", kv_rows(three_cells["snap"]))
    result = run_cli("gate", "--baseline", str(base), "--candidate", str(base), "--max-missing", value)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: --max-missing must be a fraction between 0 and 1"), lines[0]
    assert result.stdout == ""


# --- the acceptance: the real embedded model --------------------------------------------------------------------

EVAL = ("eval", "--method", "snapkv", "--param", "ratio=0.5", "--task", "multiturn", "--limit", "3",
        "--compression", "query-aware", "--quiet")  # query-agnostic snapkv at ratio 0.5 scores 0 here: nothing to drop


class StarvedSnapKV(SnapKV):
    """Test-only: what a broken change to snapkv could do, keep nothing but its observation window."""

    name = "test-starved-snapkv"

    def layer_target(self, call: LayerCall, reference: int) -> int:
        return self.window


def _make_runs(root: Path, model) -> None:
    """BASE and an unchanged rerun through the CLI; a starved snapkv in-process, relabelled as the snapkv cell."""
    for name in ("base", "rerun"):
        result = run_cli(*EVAL, "--out", str(root / name))
        assert result.returncode == 0, result.stderr
    request = EvalRequest(method="snapkv", task="multiturn", params=("ratio=0.5",), limit=3,
                          compression="query-aware", out=root / "scratch")
    outcome = run_eval(request, model=model, method=StarvedSnapKV(SnapKVParams(ratio=0.5)))
    baseline = read_results([root / "base"]).slice(0, 1).to_pylist()[0]
    rows = [{**row, "method": baseline["method"], "method_params": baseline["method_params"]} for row in outcome.rows]
    write_atomic(rows, root / "degraded" / outcome.path.name)


@pytest.fixture(scope="module")
def snapkv_runs(tmp_path_factory, worker_id, request) -> Path:
    """The three runs, made once per test session even when both tests land on different xdist workers."""
    if worker_id == "master":
        root = tmp_path_factory.mktemp("gate-runs")
        _make_runs(root, request.getfixturevalue("embedded"))
        return root
    root = tmp_path_factory.getbasetemp().parent / "gate-runs"  # shared by the session's workers
    with FileLock(f"{root}.lock"):
        if not (root / "done").exists():
            _make_runs(root, request.getfixturevalue("embedded"))
            (root / "done").touch()
    return root


@pytest.mark.xdist_group("gate-runs")  # one worker makes the runs; the other need not wait on the lock
def test_gate_acceptance_with_the_embedded_model(snapkv_runs):
    unchanged = run_gate([snapkv_runs / "base"], [snapkv_runs / "rerun"])
    assert unchanged.passed and len(unchanged.cells) == 1, render_markdown(unchanged)
    cell = unchanged.cells[0]
    assert cell.status == "unchanged" and cell.matched == 12 and cell.clusters == 3
    assert cell.baseline_score > 0.3  # there is something a broken method can lose

    degraded = run_gate([snapkv_runs / "base"], [snapkv_runs / "degraded"])
    report = render_markdown(degraded)
    assert not degraded.passed, report
    cell = degraded.cells[0]
    assert cell.status == "regressed" and cell.failed and cell.matched == 12
    assert cell.key["method"] == "snapkv" and json.loads(cell.key["cell_params"])["ratio"] == 0.5
    assert cell.kv_ratio < 0.25  # the injected method really kept far fewer tokens
    assert report.startswith("### cachebench gate: FAIL")
    assert f"| regressed | multiturn.passkey | snapkv | `{cell.key['cell_params']}` |" in report


@pytest.mark.xdist_group("gate-runs")
def test_gate_cli_exit_codes(snapkv_runs, tmp_path):
    base, rerun, degraded = (str(snapkv_runs / name) for name in ("base", "rerun", "degraded"))
    passed = run_cli("gate", "--baseline", base, "--candidate", rerun)
    assert passed.returncode == 0, passed.stderr
    assert passed.stdout.startswith("### cachebench gate: PASS")

    report = tmp_path / "gate.json"
    failed = run_cli("gate", "--baseline", base, "--candidate", degraded, "--json", str(report))
    assert failed.returncode == 1, failed.stderr
    assert failed.stdout.startswith("### cachebench gate: FAIL")
    assert "| regressed | multiturn.passkey | snapkv |" in failed.stdout
    data = json.loads(report.read_text())
    assert data["passed"] is False and data["cells"][0]["key"]["method"] == "snapkv"

    too_big = run_cli("gate", "--baseline", base, "--candidate", rerun, "--max-kv-ratio", "0.5")
    assert too_big.returncode == 1 and "KV bytes ×1.00 > 0.5" in too_big.stdout

    for args, message in ((("--candidate", str(tmp_path / "nope")), "--candidate: no such results file"),
                          (("--candidate", rerun, "--tolerance=-1"), "--tolerance must be a number >= 0")):
        result = run_cli("gate", "--baseline", base, *args)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr
