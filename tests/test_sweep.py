"""Sweeps: grid files expand to the cells they say and are checked before anything runs; every (cell, shard) has a
stable file, so reruns skip what is done and continue what was cut; the Ray executor gives the local executor's rows
even when a worker is killed; the shipped CI suite is a sweep whose committed reference is in step with it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import CLI, REPO, assert_usage_error, run_cli
from filelock import FileLock

from cachebench.errors import UsageError
from cachebench.registry import method_track
from cachebench.results import RUN_STATE_KEY, read_results
from cachebench.shards import select_shard
from cachebench.sweep.check import check_sweep
from cachebench.sweep.grid import load_sweep, parse_sweep, shipped_names
from cachebench.sweep.state import CELLS, MANIFEST, check_out, shards
from cachebench.taskspec import resolve_tasks

REFERENCE = REPO / "results" / "reference" / "ci"
# 3 methods x 2 ratios on multiturn, 2 episodes each (4 turns per episode), short contexts: 12 episodes in all
SMALL = """
name: small
dtype: float32
device: cpu
limit: 2
context_tokens: 256
grid:
  - task: multiturn
    methods: {streamingllm: {ratio: [0.25, 0.5]}, snapkv: {ratio: [0.25, 0.5]}, pyramidkv: {ratio: [0.25, 0.5]}}
"""
ONE_EPISODE = "dtype: float32\ndevice: cpu\nlimit: 1\ncontext_tokens: 256\ngrid:\n"  # cheap cells, one episode each
# one pytest-xdist worker runs this whole module, so the module's reference run is made once, not once per worker
pytestmark = pytest.mark.xdist_group("sweep")


def _write(tmp_path: Path, text: str, name: str = "grid.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def _start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([*CLI, *args], cwd=REPO, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(found, what: str, timeout: float = 300.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = found()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _file_states(out: Path) -> dict[str, bool]:
    """Shard file name -> whether its run finished, for the files written so far."""
    states = {}
    for path in (out / CELLS).glob("*.parquet"):
        try:
            run = json.loads(pq.read_metadata(path).metadata[RUN_STATE_KEY])
        except (OSError, KeyError, ValueError):
            continue  # being replaced this instant
        states[path.name] = run["complete"]
    return states


def _items(out: Path) -> dict[tuple, tuple]:
    """(method, params, task, episode, turn) -> (prediction, score) of every row; a repeated item fails."""
    rows = read_results([out]).to_pylist()
    items = {(r["method"], r["cell_params"], r["task"], r["episode_id"], r["turn"]): (r["prediction"], r["score"])
             for r in rows}
    assert len(items) == len(rows), "an item is held twice"
    return items


def _created(out: Path) -> dict[tuple, object]:
    return {(r["run_id"], r["episode_id"], r["turn"]): r["created_at"] for r in read_results([out]).to_pylist()}


# --- grid files ---------------------------------------------------------------------------------------------------

def test_a_grid_expands_to_the_product_it_writes_with_stable_cell_keys():
    sweep = parse_sweep(textwrap.dedent("""
        dtype: float32
        seeds: [0, 1]
        grid:
          - methods: {full: {}, snapkv: {ratio: [0.25, 0.5], window: 8}}
            tasks: [multiturn, rag.passages]
            modes: [multi-turn, multi-request]
            compression: [query-agnostic, query-aware]
          - {method: full, task: multiturn, mode: multi-turn, compression: query-aware, seed: 1, limit: 3}
          - {method: full, task: multiturn, mode: multi-turn, compression: query-agnostic, seed: 0}
        """), "grid.yaml", "grid")
    assert len(sweep.cells) == 3 * 2 * 2 * 2 * 2 + 1  # the last block repeats a cell of the first: run once
    assert sweep.merged == 1
    snapkv = [cell for cell in sweep.cells if cell.method == "snapkv"]
    assert {cell.assignments() for cell in snapkv} == {("ratio=0.25", "window=8"), ("ratio=0.5", "window=8")}
    assert {cell.option("seed") for cell in sweep.cells} == {0, 1}
    assert all(cell.option("dtype") == "float32" and cell.option("device") == "auto" for cell in sweep.cells)
    assert len({cell.key for cell in sweep.cells}) == len(sweep.cells)
    again = parse_sweep("grid:\n  - {method: snapkv, task: multiturn, params: {window: 8, ratio: 0.25}, "
                        "compression: query-aware, seed: 1, mode: multi-request, dtype: float32}\n", "x", "x")
    assert again.cells[0].key in {cell.key for cell in snapkv}  # same cell, however the file around it is written
    request = snapkv[0].request(Path("out"), 0)
    assert request.run_id == snapkv[0].stem and request.shard is None and request.dtype == "float32"


@pytest.mark.parametrize(("text", "message"), [
    ("grid:\n  - {method: full, task: semantic.stream}\n",
     "cell 0 (full on semantic.stream): task semantic.stream is a semantic-cache task"),
    ("grid:\n  - {method: exact, task: multiturn.passkey}\n", "method 'exact' is a semantic cache"),
    ("grid:\n  - {method: full, task: multiturn.pasky}\n", "unknown task 'multiturn.pasky'"),
    ("grid:\n  - {methods: {h2o: {ratio: [0.5, 2]}}, task: multiturn}\n", "cell 1 (h2o ratio=2 on multiturn"),
    ("grid:\n  - {method: h2o, task: multiturn, limt: 2}\n", "block 0: unknown key 'limt'"),
    ("grid:\n  - {method: full, task: multiturn, llm_cost: 800}\n", "llm_cost applies to semantic-cache cells"),
    ("grid:\n  - {method: full, task: multiturn, modes: [multi-turn, sideways]}\n", "--mode 'sideways'"),
    ("grid:\n  - {method: exact, task: semantic.stream, data: nowhere.json}\n", "data nowhere.json: no such file"),
    ("grid:\n  - {method: exact, task: semantic.stream, shards: 2}\n", "shards apply to KV-cache cells"),
    ("grid:\n  - {methods: [full], method: full, task: multiturn}\n", "both 'method' and 'methods'"),
    ("grid:\n  - {methods: [full, snapkv], params: {ratio: 0.5}, task: multiturn}\n", "`params` goes with one"),
    ("grid:\n  - {method: full, task: multiturn, limit: ten}\n", "limit must be an int"),
    ("grid: [\n", "not valid YAML"),
    ("grid: []\n", "`grid` must be a non-empty list"),
    ("dtype: float8\ngrid:\n  - {method: full, task: multiturn}\n", "--dtype 'float8'"),
])
def test_a_bad_grid_is_one_line_usage_error(tmp_path, text, message):
    with pytest.raises(UsageError) as caught:
        check_sweep(load_sweep(file=_write(tmp_path, text)), tmp_path / "out")
    assert message in str(caught.value) and "\n" not in str(caught.value), str(caught.value)


def test_plan_of_a_grid_with_a_misspelt_method_or_an_out_of_range_param_runs_nothing(tmp_path):
    out = tmp_path / "out"
    for text, message in (("grid:\n  - {methods: [full, snapkvv], task: multiturn}\n", "unknown method 'snapkvv'"),
                          ("grid:\n  - {methods: {snapkv: {ratio: [0.5, 1.5]}}, task: multiturn}\n",
                           "--param ratio=1.5")):
        path = _write(tmp_path, text)
        assert_usage_error(run_cli("sweep", "plan", str(path), "--out", str(out)), message, tmp_path)
        assert_usage_error(run_cli("sweep", "run", str(path), "--out", str(out)), message, tmp_path)
        assert not out.exists()


def test_the_ray_executor_without_ray_installed_is_one_line_and_writes_nothing(tmp_path):
    fake = tmp_path / "site"
    (fake / "ray").mkdir(parents=True)
    (fake / "ray" / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    path = _write(tmp_path, "grid:\n  - {method: full, task: multiturn, limit: 1}\n")
    out = tmp_path / "out"
    result = run_cli("sweep", "run", str(path), "--out", str(out), "--executor", "ray", env={"PYTHONPATH": str(fake)})
    assert_usage_error(result, "--executor ray needs Ray: pip install 'cachebench[ray]'", tmp_path)
    assert not out.exists()
    assert_usage_error(run_cli("sweep", "run", str(path), "--out", str(out), "--executor", "dask"),
                       "--executor 'dask': expected one of local, ray", tmp_path)


def test_a_sweep_will_not_mix_its_cells_with_other_result_files(tmp_path):
    sweep = parse_sweep("grid:\n  - {method: full, task: multiturn}\n", "mine.yaml", "mine")
    (tmp_path / "old.parquet").write_bytes(b"")
    with pytest.raises(UsageError, match=r"holds old\.parquet, which is not a cell of this sweep"):
        check_out(sweep, tmp_path)


def test_shards_split_every_item_list_into_disjoint_blocks_that_cover_it():
    for length in (0, 1, 2, 5, 17):
        for count in (1, 2, 3, 8):
            blocks = [select_shard(list(range(length)), (index, count)) for index in range(count)]
            assert [item for block in blocks for item in block] == list(range(length))
            assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


@pytest.mark.parametrize(("shard", "message"), [("2/2", "must be below 2"), ("1/0", "between 1 and"),
                                                ("a/b", "expected I/N"), ("-1/2", "expected I/N")])
def test_a_bad_shard_is_one_line(tmp_path, shard, message):
    result = run_cli("eval", "--method", "full", "--task", "multiturn", "--shard", shard, "--out", str(tmp_path))
    assert_usage_error(result, message, tmp_path)


def test_a_semantic_run_refuses_to_be_split(tmp_path):
    result = run_cli("eval", "--method", "exact", "--task", "semantic.stream", "--shard", "0/2", "--out",
                     str(tmp_path))
    assert_usage_error(result, "--shard applies to KV tasks", tmp_path)


# --- the shipped suite ----------------------------------------------------------------------------------------------

def test_the_ci_suite_is_a_sweep_of_both_tracks_that_checks(tmp_path):
    sweep = load_sweep("ci")
    assert "ci" in shipped_names() and sweep.name == "ci" and len(sweep.cells) == 10
    assert {method_track(cell.method) for cell in sweep.cells} == {"kv", "semantic"}
    for cell in sweep.cells:
        assert {spec.track for spec in resolve_tasks(cell.task)} == {method_track(cell.method)}, cell
        assert (cell.option("dtype"), cell.option("device"), cell.option("seed")) == ("float32", "cpu", 0)
    check_sweep(sweep, tmp_path / "out")


def test_committed_reference_was_made_by_the_ci_suite_as_it_stands():
    manifest = json.loads((REFERENCE / MANIFEST).read_text())
    sweep = load_sweep("ci")
    assert [cell["key"] for cell in manifest["cells"]] == [cell.key for cell in sweep.cells], \
        "ci.yaml changed: refresh the reference (docs/ci.md)"
    files = sorted(path.name for path in (REFERENCE / CELLS).glob("*.parquet"))
    assert files == sorted(f"{shard.run_id}.parquet" for shard in shards(sweep))
    assert all(record["state"] == "done" and record["errors"] == 0 for record in manifest["shards"].values())
    assert read_results([REFERENCE]).num_rows == sum(record["rows"] for record in manifest["shards"].values())


def test_cli_lists_suites_and_rejects_an_unknown_one_in_one_line(tmp_path):
    listed = run_cli("suite", "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("ci: ") and "h2o ratio=0.5 on multiturn" in listed.stdout
    out = tmp_path / "out"
    assert_usage_error(run_cli("suite", "run", "nope", "--out", str(out)), "unknown suite 'nope'", tmp_path)
    assert not out.exists()


# --- running: local, sharded, killed, resumed, Ray ----------------------------------------------------------------

@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> tuple[Path, Path]:
    """(the small grid's file, the folder of its uninterrupted local run), made once per test session: in a folder
    the session's xdist workers share, under a lock."""
    base = tmp_path_factory.getbasetemp()
    root = (base if worker_id == "master" else base.parent) / "sweep-reference"
    with FileLock(f"{root}.lock"):
        if not (root / "done").exists():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            grid = _write(root, SMALL)
            result = run_cli("sweep", "run", str(grid), "--out", str(root / "reference"), "--quiet", timeout=900)
            assert result.returncode == 0, result.stderr
            assert "6 shards (6 done, 0 partial, 0 failed, 0 pending)" in result.stderr
            (root / "done").touch()
    return root / "grid.yaml", root / "reference"


def test_a_rerun_skips_every_finished_shard_and_status_says_done(reference_run, tmp_path):
    grid, reference = reference_run
    out = tmp_path / "again"
    shutil.copytree(reference, out)
    before = _created(out)
    result = run_cli("sweep", "run", str(grid), "--out", str(out), "--quiet")
    assert result.returncode == 0 and "ran 0, kept 6 already done" in result.stderr, result.stderr
    assert _created(out) == before
    status = run_cli("sweep", "status", str(out))
    assert status.returncode == 0 and "6 shards: 6 done, 0 partial, 0 failed, 0 pending" in status.stdout
    plan = run_cli("sweep", "plan", str(grid), "--out", str(out))
    assert plan.returncode == 0 and "6 done" in plan.stdout and "0 to run" in plan.stdout, plan.stdout


def test_a_folder_holding_the_sweep_twice_reads_as_one_copy(reference_run, tmp_path):
    _, reference = reference_run
    shutil.copytree(reference, tmp_path / "a")
    shutil.copytree(reference, tmp_path / "b")
    one, two = (json.loads(run_cli("show", str(path), "--format", "json").stdout) for path in (reference, tmp_path))
    assert [(r["n"], r["score"], r["ci_low"], r["ci_high"]) for r in one] == \
        [(r["n"], r["score"], r["ci_low"], r["ci_high"]) for r in two]
    gate = run_cli("gate", "--baseline", str(reference), "--candidate", str(tmp_path))
    assert gate.returncode == 0, gate.stdout + gate.stderr


def test_shards_of_a_cell_hold_the_unsharded_run_row_for_row(reference_run, tmp_path):
    _, reference = reference_run
    args = ["eval", "--method", "snapkv", "--param", "ratio=0.5", "--task", "multiturn", "--limit", "2",
            "--context-tokens", "256", "--dtype", "float32", "--device", "cpu", "--out", str(tmp_path), "--quiet"]
    for shard in ("0/2", "1/2"):
        result = run_cli(*args, "--shard", shard)
        assert result.returncode == 0, result.stderr
    rows = read_results([tmp_path]).to_pylist()
    assert sorted((r["shard"], r["episode_id"]) for r in rows if r["turn"] == 0) == [("0/2", "passkey-0-0"),
                                                                                     ("1/2", "passkey-0-1")]
    whole = {key: value for key, value in _items(reference).items()
             if key[0] == "snapkv" and json.loads(key[1])["ratio"] == 0.5}
    assert _items(tmp_path) == whole and len(whole) == 8


def test_a_sigkilled_sweep_continues_where_it_stopped_and_recomputes_nothing(reference_run, tmp_path):
    _, reference = reference_run
    # two of the reference grid's cells (the same keys, so the same items): the first finishes, the second is cut
    grid = _write(tmp_path, SMALL.replace(", snapkv: {ratio: [0.25, 0.5]}, pyramidkv: {ratio: [0.25, 0.5]}", ""))
    out = tmp_path / "out"
    process = _start("sweep", "run", str(grid), "--out", str(out), "--quiet")
    try:
        _wait_for(lambda: (lambda s: True in s.values() and False in s.values())(_file_states(out)),
                  "a finished shard and a checkpoint of the next")
    finally:
        process.kill()  # SIGKILL: nothing of the sweep's own clean-up runs
        process.communicate()
    states = _file_states(out)
    partial = [name for name, complete in states.items() if not complete]
    assert partial and any(states.values())
    status = run_cli("sweep", "status", str(out))
    assert status.returncode == 0 and " partial" in status.stdout, status.stdout
    before = _created(out)
    result = run_cli("sweep", "run", str(grid), "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    after = _created(out)
    assert {key: after[key] for key in before} == before  # finished shards and the checkpoint's episode kept
    assert len(after) > len(before)
    items = _items(out)
    whole = _items(reference)
    assert len(items) == 16 and items == {key: whole[key] for key in items}


def test_a_ray_sweep_with_a_killed_worker_gives_the_local_rows(reference_run, tmp_path):
    pytest.importorskip("ray", reason="the Ray executor is an optional extra; scripts/setup.sh installs it")
    grid, reference = reference_run
    out = tmp_path / "ray"
    process = _start("sweep", "run", str(grid), "--out", str(out), "--executor", "ray", "--workers", "1", "--quiet")
    try:
        workers = out / ".sweep" / "workers"
        record = _wait_for(lambda: next(workers.glob("*.json"), None) if workers.exists() else None, "a worker")
        pid = json.loads(record.read_text())["pid"]
        _wait_for(lambda: sum(_file_states(out).values()) >= 1, "a finished shard")
        os.kill(pid, signal.SIGKILL)
        _, stderr = process.communicate(timeout=600)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert "worker lost" in stderr and "6 shards (6 done" in stderr, stderr
    assert len(list(workers.glob("*.json"))) == 2  # the killed worker and its replacement
    assert _items(out) == _items(reference)


FAULTY = '''
"""An eviction method whose scorer runs out of memory on every call: a cell that fails, for the sweep tests."""
import torch

from cachebench import BudgetParams, EvictionMethod


class OutOfMemory(EvictionMethod):
    name = "oom"
    summary = "Fails every episode with an out-of-memory error."
    Params = BudgetParams
    uses_queries = False

    def score(self, call, keys, queries):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected)")
'''


def test_a_failing_cell_gives_error_rows_the_sweep_goes_on_and_exits_1(tmp_path):
    (tmp_path / "faulty.py").write_text(FAULTY)
    grid = _write(tmp_path, ONE_EPISODE + '  - {methods: ["faulty:OutOfMemory", full], task: multiturn.passkey, '
                            'max_new_tokens: 8}\n')
    out = tmp_path / "out"
    env = {"PYTHONPATH": str(tmp_path)}
    result = run_cli("sweep", "run", str(grid), "--out", str(out), "--quiet", env=env)
    assert result.returncode == 1, result.stderr
    assert "1 shard(s) did not finish" in result.stderr and "OutOfMemoryError" in result.stderr, result.stderr
    rows = read_results([out]).to_pylist()
    failed = [row for row in rows if row["method"] == "oom"]
    assert failed and all("OutOfMemoryError" in row["error"] for row in failed)
    assert all(row["error"] is None for row in rows if row["method"] == "full")
    status = run_cli("sweep", "status", str(out), env=env)
    assert "1 done, 0 partial, 1 failed, 0 pending" in status.stdout, status.stdout
    before = {key: value for key, value in _created(out).items() if key[0].startswith("full")}
    again = run_cli("sweep", "run", str(grid), "--out", str(out), "--quiet", env=env)
    assert again.returncode == 1 and "ran 1, kept 1 already done" in again.stderr, again.stderr  # only the failure
    assert {key: value for key, value in _created(out).items() if key[0].startswith("full")} == before


def test_ctrl_c_stops_a_sweep_with_exit_130_and_keeps_finished_shards(tmp_path):
    grid = _write(tmp_path, ONE_EPISODE + "  - {methods: {full: {}, streamingllm: {ratio: [0.25, 0.5, 0.75]}}, "
                            "task: multiturn.passkey}\n")
    out = tmp_path / "out"
    process = _start("sweep", "run", str(grid), "--out", str(out), "--quiet")
    try:
        _wait_for(lambda: sum(_file_states(out).values()) >= 1, "a finished shard")
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert "interrupted;" in stderr and "run the same command again to continue" in stderr, stderr
    assert sum(_file_states(out).values()) >= 1
    status = run_cli("sweep", "status", str(out))
    assert status.returncode == 0 and " done" in status.stdout and "pending" in status.stdout


def test_the_progress_view_counts_shards_rows_and_an_eta(capsys):
    from cachebench.sweep.progress import SweepView
    from cachebench.sweep.work import ShardResult

    sweep = parse_sweep("grid:\n  - {methods: {snapkv: {ratio: [0.25, 0.5, 0.75]}}, task: multiturn, shards: 2}\n",
                        "x", "x")
    parts = list(shards(sweep))
    view = SweepView(live=False)
    view.begin(total=len(parts), kept=2, workers=2)
    assert view.eta_seconds() is None  # nothing measured yet: no made-up ETA
    for shard, seconds in zip(parts[2:4], (10.0, 30.0), strict=True):
        view.shard_started(shard, "host:1")
        view.shard_done(shard, ShardResult(shard.run_id, "done", 8, 8, 0, seconds, 0.5, "host:1"))
    failed = parts[4]
    view.shard_started(failed)
    view.shard_done(failed, ShardResult(failed.run_id, "failed", 0, 0, 0, 20.0, None, "host:1", "boom"))
    assert (view.done, view.failed, view.rows) == (4, 1, 16)
    assert view.eta_seconds() == pytest.approx(1 * 20.0 / 2)  # one shard left x mean 20 s over 2 workers
    assert "0 running, 1 failed, 1 pending" in view._line()
    err = capsys.readouterr().err
    assert "6 shards, 2 already done, 4 to run on 2 workers" in err and "FAILED: boom" in err
