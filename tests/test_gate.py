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
from cachebench.errors import UsageError
from cachebench.evaluate import EvalRequest, run_eval
from cachebench.gate import GateOptions, gate_command, paired_bootstrap, render_markdown, run_gate, to_json
from cachebench.method import LayerCall
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
    assert cell.status == "regressed" and cell.key["method"] == "h2o" and cell.key["method_params"] == H2O
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
    assert failed[0]["key"] == {"task": "multiturn.passkey", "method": "h2o", "method_params": H2O, "model": "M",
                                "mode": "multi-turn", "compression": "query-agnostic"}
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
    cand = write(tmp_path / "cand", kv_rows(scores[:10], errors=((1, 1),)))  # two episodes fewer
    cell = run_gate([base], [cand], GateOptions(allow_new_errors=True)).cells[0]
    assert (cell.matched, cell.baseline_only, cell.candidate_only) == (38, 8, 0)
    assert (cell.baseline_errors, cell.candidate_errors, cell.new_errors) == (1, 1, 1)
    assert cell.status == "unchanged" and not cell.failed
    failed = run_gate([base], [cand]).cells[0]
    assert failed.failed and failed.reasons == ["1 item(s) fail only in the candidate"]

    everything_fails = write(tmp_path / "broken", kv_rows(scores, errors=tuple(np.ndindex(scores.shape))))
    broken = run_gate([base], [everything_fails])
    assert not broken.passed and broken.cells[0].status == "incomparable" and broken.cells[0].new_errors == 47


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


def test_a_single_episode_is_not_judged(tmp_path):
    scores = np.ones((1, 4))
    result = run_gate([write(tmp_path / "base", kv_rows(scores))], [write(tmp_path / "cand", kv_rows(scores * 0))])
    cell = result.cells[0]
    assert result.passed and cell.status == "unchanged" and cell.difference == -1 and np.isnan(cell.high)
    assert "one cluster: no interval, not judged" in render_markdown(result)


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
    assert cell.key["method"] == "snapkv" and json.loads(cell.key["method_params"])["ratio"] == 0.5
    assert cell.kv_ratio < 0.25  # the injected method really kept far fewer tokens
    assert report.startswith("### cachebench gate: FAIL")
    assert f"| regressed | multiturn.passkey | snapkv | `{cell.key['method_params']}` |" in report


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
