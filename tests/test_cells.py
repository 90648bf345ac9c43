"""One cell definition for every reader (cachebench.cells): the same run read twice counts once in `show`, `gate`
and the leaderboard; storage settings never split a cell, dtype always does; intervals need two episodes; the
machine-readable formats parse with pandas; a folder of result files reads with one line of pandas or DuckDB."""

from __future__ import annotations

import io
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_cli

from cachebench.gate import run_gate
from cachebench.leaderboard.aggregate import aggregate
from cachebench.results import METADATA_KEY, SCHEMA, SCHEMA_VERSION, UPGRADABLE, write_atomic

STORES = ({"store": "sqlite", "sqlite_path": "/tmp/a.db"}, {"store": "memory"},
          {"store": "redis", "redis_url": "redis://127.0.0.1:6390/0"},
          {"store": "chroma", "chroma_url": "http://127.0.0.1:53225"})


def kv_rows(run_id: str = "run-a", method: str = "snapkv", dtype: str = "bfloat16", episodes: int = 6,
            shift: float = 0.0, created: int = 1) -> list[dict]:
    """Three turns per episode; episode e scores (e % 3) / 2 on every turn, plus `shift`."""
    return [{"run_id": run_id, "created_at": datetime(2026, 1, created, tzinfo=UTC), "seed": 0, "task": "t.kv",
             "mode": "multi-turn", "compression": "query-agnostic", "method": method,
             "method_params": '{"ratio":0.5}' if method == "snapkv" else "{}", "model": "m",
             "model_weights": "pretrained", "dtype": dtype, "episode_id": f"e{e}", "turn": t,
             "references": ["x"], "metric": "substring", "score": min(1.0, (e % 3) / 2 + shift), "kv_bytes": 100,
             "ttft_ms": 10.0, "prefill_ms": 90.0} for e in range(episodes) for t in range(3)]


def semantic_rows(params: dict, run_id: str) -> list[dict]:
    outcomes = ["TP", "TP", "FP", "FN", "TN", "TP", "FN", "TN", "TP", "TP"]
    return [{"run_id": run_id, "created_at": datetime(2026, 1, 3, tzinfo=UTC), "seed": 0, "task": "semantic.stream",
             "mode": "stream", "method": "threshold", "method_params": json.dumps({"threshold": 0.8, **params}),
             "model": "emb", "model_weights": "pretrained", "episode_id": f"r{turn}", "turn": turn,
             "category": "a", "references": ["x"], "metric": "semantic_outcome", "score": float(outcome != "FP"),
             "hit": outcome in ("TP", "FP"), "outcome": outcome, "lookup_ms": 1.0, "stale": False, "warmup": False}
            for turn, outcome in enumerate(outcomes)]


def shown(*paths: Path, output: str = "json") -> list[dict]:
    result = run_cli("show", *map(str, paths), "--format", output)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout) if output == "json" else result.stdout


def overall(records: list[dict], **key) -> dict:
    found = [r for r in records if r["category"] == "all" and all(r[k] == v for k, v in key.items())]
    assert len(found) == 1, (key, found)
    return found[0]


def test_the_same_run_twice_reads_as_one_copy_everywhere(tmp_path):
    once, twice = tmp_path / "once", tmp_path / "twice"
    write_atomic(kv_rows() + kv_rows(method="full"), once / "run.parquet")
    twice.mkdir()
    shutil.copy(once / "run.parquet", twice / "a.parquet")
    shutil.copy(once / "run.parquet", twice / "b.parquet")
    one, two = overall(shown(once), method="snapkv"), overall(shown(twice), method="snapkv")
    assert one["n"] == two["n"] == 18
    assert (one["score"], one["ci_low"], one["ci_high"]) == (two["score"], two["ci_low"], two["ci_high"])
    assert one["ci_low"] < one["score"] < one["ci_high"]
    board_one, board_two = aggregate([once]), aggregate([twice])
    for a, b in zip(board_one.kv, board_two.kv, strict=True):
        assert (a.n, a.score, a.low, a.high, a.kv_ratio) == (b.n, b.score, b.low, b.high, b.kv_ratio)
    assert board_two.kv[0].provenance.rows == 18  # items counted: one copy's
    assert len(board_two.kv[0].provenance.sources) == 2  # both files are named in the provenance
    gate = run_gate([once], [twice])
    assert gate.passed and {cell.matched for cell in gate.cells} == {18}
    assert {cell.clusters for cell in gate.cells} == {6}  # six episodes, not twelve


def test_a_rerun_replaces_the_items_it_repeats(tmp_path):
    """Two runs of the same items: the newer run's rows count, once; the older run's are not extra evidence."""
    write_atomic(kv_rows("old", shift=0.0, created=1), tmp_path / "old.parquet")
    write_atomic(kv_rows("new", shift=0.5, created=2), tmp_path / "new.parquet")
    cell = overall(shown(tmp_path), method="snapkv")
    expected = sum(min(1.0, (e % 3) / 2 + 0.5) for e in range(6)) / 6
    assert cell["n"] == 18 and cell["score"] == pytest.approx(expected)


def test_storage_settings_never_split_a_cell_and_dtype_always_does(tmp_path):
    for index, store in enumerate(STORES):
        write_atomic(semantic_rows(store, f"run-{index}"), tmp_path / f"s{index}.parquet")
    write_atomic(kv_rows(dtype="bfloat16"), tmp_path / "bf16.parquet")
    write_atomic(kv_rows("run-fp32", dtype="float32"), tmp_path / "fp32.parquet")
    board = aggregate([tmp_path])
    assert len(board.semantic) == 1
    entry = board.semantic[0]
    assert entry.cell.key["cell_params"] == '{"threshold":0.8}' and entry.overall.rates.n == 10
    stores = {json.loads(setting)["store"] for setting in entry.provenance.settings}
    assert stores == {"sqlite", "memory", "redis", "chroma"}  # recorded in the provenance
    assert sorted(cell.dtype for cell in board.kv) == ["bfloat16", "float32"]
    text = shown(tmp_path, output="table")
    assert "53225" not in text and "chroma_url" not in text  # no ephemeral port in a headline
    records = shown(tmp_path)
    assert {r["dtype"] for r in records if r["track"] == "kv"} == {"bfloat16", "float32"}


def test_one_episode_has_no_interval(tmp_path):
    write_atomic(kv_rows(episodes=1, shift=0.25), tmp_path / "one.parquet")
    record = overall(shown(tmp_path), method="snapkv")
    assert record["n"] == 3 and record["ci_low"] is None and record["ci_high"] is None
    table = shown(tmp_path, output="table")
    line = next(line for line in table.splitlines() if line.strip().startswith("snapkv"))
    assert "0.250" in line and "–" in line and "0.250–0.250" not in line


def test_show_formats_parse(tmp_path):
    write_atomic(kv_rows() + kv_rows(method="full"), tmp_path / "kv.parquet")
    write_atomic(semantic_rows({"store": "memory"}, "sem"), tmp_path / "sem.parquet")
    frame = pd.read_csv(io.StringIO(shown(tmp_path, output="csv")))
    assert set(frame["track"]) == {"kv", "semantic"}
    assert frame.loc[(frame.method == "snapkv") & (frame.category == "all"), "score"].item() == pytest.approx(0.5)
    assert frame.loc[frame.track == "semantic", "hit_rate"].notna().all()
    markdown = shown(tmp_path, output="markdown")
    assert "| method |" in markdown and "---: |" in markdown
    assert "TTFT (question)" in markdown and "TTFT (request, with context)" in markdown
    bad = run_cli("show", str(tmp_path), "--format", "xlsx")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--format" in bad.stderr


def test_older_files_upgrade_in_place_and_a_folder_reads_in_one_line(tmp_path):
    table = pa.Table.from_pylist(kv_rows(), schema=SCHEMA).drop_columns(list(UPGRADABLE["4"]))
    pq.write_table(table.replace_schema_metadata({METADATA_KEY: b"4"}), tmp_path / "v4.parquet")
    write_atomic(kv_rows("current", method="full"), tmp_path / "v7.parquet")
    before = shown(tmp_path)
    upgraded = run_cli("upgrade", str(tmp_path))
    assert upgraded.returncode == 0 and "v4.parquet (schema version 4)" in upgraded.stdout
    assert "v7.parquet" not in upgraded.stdout
    assert pq.read_metadata(tmp_path / "v4.parquet").metadata[METADATA_KEY] == SCHEMA_VERSION.encode()
    assert shown(tmp_path) == before  # the same cells, the same numbers
    frame = pd.read_parquet(tmp_path)
    assert list(frame.columns) == SCHEMA.names and set(frame.track) == {"kv"} and len(frame) == 36
    counted = duckdb.sql(f"SELECT count(*), count(request_ttft_ms) FROM read_parquet('{tmp_path}/*.parquet', "
                         "union_by_name = true)").fetchall()[0]
    assert counted == (36, 36)


def test_the_documented_one_liners_read_the_committed_results():
    """The Python block of docs/results.md's "Reading a folder of results", run as written on the repository's
    results/ folder (every committed file must be of the current schema for the pandas line to see all columns)."""
    import os
    import re

    repo = Path(__file__).resolve().parents[1]
    text = (repo / "docs" / "results.md").read_text()
    block = re.search(r"## Reading a folder of results.*?```python\n(.*?)```", text, re.S).group(1)
    before = os.getcwd()
    os.chdir(repo)
    try:
        scope: dict = {}
        exec(block, scope)
    finally:
        os.chdir(before)
    assert scope["table"].num_rows == len(pd.read_parquet(repo / "results"))
    assert list(scope["frame"].columns) == SCHEMA.names and scope["frame"]["track"].notna().all()


def perf_rows(run_id: str, kv: int) -> list[dict]:
    return [{"run_id": run_id, "created_at": datetime(2026, 1, 4, tzinfo=UTC), "seed": 0, "track": "perf",
             "task": "perf", "mode": "perf", "compression": "query-agnostic", "method": method,
             "method_params": "{}", "model": "random:llama-3.1-8b", "model_weights": "random", "dtype": "bfloat16",
             "context_length": 4096, "episode_id": str(repeat), "turn": 0, "references": [], "prefill_ms": 50.0,
             "ttft_ms": 60.0, "decode_ms_per_token": 5.0, "kv_bytes": kv if method == "snapkv" else 1000}
            for method in ("full", "snapkv") for repeat in range(3)]


def test_perf_cells_are_judged_by_cost_checks_only(tmp_path):
    write_atomic(perf_rows("base", 500), tmp_path / "base" / "p.parquet")
    write_atomic(perf_rows("cand", 900), tmp_path / "cand" / "p.parquet")
    board = aggregate([tmp_path / "base"])
    snapkv = next(cell for cell in board.kv if cell.method == "snapkv")
    assert snapkv.track == "perf" and snapkv.kv_ratio == pytest.approx(0.5) and snapkv.request_ttft_ms == 60.0
    unjudged = run_gate([tmp_path / "base"], [tmp_path / "cand"])
    assert not unjudged.passed and all(cell.status == "incomparable" for cell in unjudged.cells)
    from cachebench.gate import GateOptions

    grown = run_gate([tmp_path / "base"], [tmp_path / "cand"], GateOptions(max_kv_ratio=1.5))
    failing = [cell.key["method"] for cell in grown.cells if cell.failed]
    assert failing == ["snapkv"]  # its KV bytes grew 1.8x; full's did not move
