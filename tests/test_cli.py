"""The command line as a user runs it: eval writes typed rows, show prints them, bad input is one line + exit 2."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import AUTO_DTYPE, AUTO_DTYPE_NAME, CLI, REPO, assert_usage_error, run_cli

from cachebench.models.embedded import converted_dir
from cachebench.results import REUSE_COLUMNS, SCHEMA, SCHEMA_VERSION, SEMANTIC_COLUMNS

FAST = ["--limit", "1", "--max-new-tokens", "6", "--quiet"]


def only_file(folder: Path) -> Path:
    files = list(folder.glob("*.parquet"))
    assert len(files) == 1, files
    return files[0]


def test_eval_writes_every_documented_column_typed_and_filled(tmp_path):
    result = run_cli("eval", "--method", "full", "--task", "multiturn", "--limit", "2", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    path = only_file(tmp_path)
    table = pq.read_table(path)
    assert table.schema.metadata[b"cachebench.schema_version"] == SCHEMA_VERSION.encode()
    assert table.schema.remove_metadata() == SCHEMA.remove_metadata()
    assert table.num_rows == 8  # two passkey episodes of four turns
    rows = table.to_pylist()
    for column in SCHEMA.names:
        values = [row[column] for row in rows]
        if column in SEMANTIC_COLUMNS or column in REUSE_COLUMNS or column in ("error", "exact_match", "shard"):
            assert all(v is None for v in values), column
        else:
            assert all(v is not None for v in values), column
    for row in rows:
        assert row["model"] == "SmolLM2-135M-Instruct" and row["model_weights"] == "pretrained"
        assert row["task"] == "multiturn.passkey" and row["method"] == "full" and row["method_params"] == "{}"
        assert row["mode"] == "multi-turn" and row["truncation"] == "none" and row["dtype"] == AUTO_DTYPE_NAME
        assert row["score"] in (0.0, 1.0) and row["metric"] == "first_int"
        assert row["kv_bytes"] > 0 and row["context_tokens"] > 400 and row["output_tokens"] > 0
        # the full cache peaks at the whole context: 30 layers x K and V x 3 heads x 64 dims x bytes per value
        assert row["peak_kv_bytes"] == row["context_tokens"] * 30 * 2 * 3 * 64 * AUTO_DTYPE.itemsize
        assert row["ttft_ms"] > 0 and row["prefill_ms"] > 0 and row["ttft_ms"] < row["prefill_ms"]
        assert math.isnan(row["decode_ms_per_token"]) or row["decode_ms_per_token"] > 0
        assert row["git_sha"] and row["hardware"] and row["run_id"] in path.name
        assert row["track"] == "kv" and row["cell_params"] == "{}" and row["context_length"] > 400
        # multi-turn: the first turn's request waited for the context's prefill too, later turns did not
        expected = row["ttft_ms"] + (row["prefill_ms"] if row["turn"] == 0 else 0.0)
        assert row["request_ttft_ms"] == pytest.approx(expected)
    shown = run_cli("show", str(tmp_path))
    assert shown.returncode == 0, shown.stderr
    assert "multiturn.passkey" in shown.stdout and "full" in shown.stdout and "score" in shown.stdout


def test_multi_request_mode_and_local_model_folder(tmp_path):
    """--model with a local folder goes through the same transformers path a hub id takes."""
    folder = str(converted_dir())
    result = run_cli("eval", "--method", "full", "--task", "multiturn.passkey", "--model", folder, "--mode",
                     "multi-request", "--dtype", "float32", "--out", str(tmp_path), *FAST)
    assert result.returncode == 0, result.stderr
    rows = pq.read_table(only_file(tmp_path)).to_pylist()
    assert {r["mode"] for r in rows} == {"multi-request"} and {r["model"] for r in rows} == {folder}
    assert {r["dtype"] for r in rows} == {"float32"}
    assert len({r["kv_bytes"] for r in rows}) <= 2  # each turn restarts from the same post-context cache


def test_random_weights_run_end_to_end(tmp_path):
    result = run_cli("eval", "--method", "full", "--task", "multiturn.passkey", "--model", "random:smollm2-135m",
                     "--out", str(tmp_path), *FAST)
    assert result.returncode == 0, result.stderr
    rows = pq.read_table(only_file(tmp_path)).to_pylist()
    assert {r["model_weights"] for r in rows} == {"random"} and {r["model"] for r in rows} == {"random:smollm2-135m"}
    assert all(r["output_tokens"] > 0 for r in rows)


def test_truncate_middle_is_recorded(tmp_path):
    """Truncation depends on the window, not on the weights: SmolLM2's shape cut to two layers and a 1,024-token
    window stands in for an 8k prefill of the real model."""
    preset = json.loads((REPO / "cachebench/models/presets/smollm2-135m.json").read_text())
    shape = tmp_path / "short-window.json"
    shape.write_text(json.dumps({**preset, "num_hidden_layers": 2, "max_position_embeddings": 1024}))
    out = tmp_path / "out"
    result = run_cli("eval", "--method", "full", "--task", "multiturn.passkey", "--model", f"random:{shape}",
                     "--context-tokens", "1200", "--truncate", "middle", "--out", str(out), "--limit", "1",
                     "--max-new-tokens", "2", "-q")
    assert result.returncode == 0, result.stderr
    rows = pq.read_table(only_file(out)).to_pylist()
    assert {r["truncation"] for r in rows} == {"middle"}
    assert all(r["truncated_tokens"] > 100 and r["context_tokens"] < 1024 for r in rows)


@pytest.mark.parametrize("inherited_mask", [False, True], ids=["plain", "sigint-blocked-by-parent"])
def test_interrupted_run_keeps_finished_rows(tmp_path, inherited_mask):
    """Ctrl-C keeps the finished rows, also when the launching process had SIGINT blocked (a mask is inherited)."""
    block = (lambda: signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})) if inherited_mask else None
    process = subprocess.Popen(
        [*CLI, "eval", "--method", "full", "--task", "multiturn.passkey", "--limit", "20", "--out", str(tmp_path),
         "--quiet"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "CACHEBENCH_CHECKPOINT_SECONDS": "0"}, preexec_fn=block,
    )
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob("*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    rows = pq.read_table(only_file(tmp_path)).to_pylist()
    assert 4 <= len(rows) < 80 and len(rows) % 4 == 0  # whole episodes only
    assert not list(tmp_path.glob(".*tmp"))


BAD_INPUTS = [
    (["--method", "fulll", "--task", "multiturn"], "unknown method 'fulll'; did you mean 'full'"),
    (["--method", "full", "--task", "multiturn.pasky"], "unknown task 'multiturn.pasky'; did you mean"),
    (["--method", "full", "--task", "multiturn", "--param", "ratio=0.5"], "method 'full' takes no parameters"),
    (["--method", "full", "--task", "multiturn", "--param", "ratio"], "expected name=value"),
    (["--method", "full", "--task", "multiturn", "--model", "/nonexistent/model"], "not a readable model folder"),
    (["--method", "full", "--task", "multiturn", "--model", "random:llama-3.1-8b", "--dtype", "float32",
      "--device", "cpu"], "needs 29.9 GiB for its weights alone"),
    (["--method", "full", "--task", "multiturn", "--model", "random:lama-3.1-8b"], "did you mean 'llama-3.1-8b'"),
    (["--method", "full", "--task", "multiturn", "--model", "someorg/not-cached"], "cannot be reached"),
    (["--method", "full", "--task", "multiturn.scbench_kv"], "could not load microsoft/SCBench scbench_kv"),
    (["--method", "full", "--task", "multiturn", "--context-tokens", "9000"], "8192-token window"),
    (["--method", "full", "--task", "multiturn", "--mode", "sideways"], "--mode 'sideways'"),
    (["--method", "full", "--task", "multiturn", "--truncate", "left"], "--truncate 'left'"),
    (["--method", "snapkv", "--task", "multiturn", "--compression", "later"], "--compression 'later'"),
    (["--method", "snapkv", "--task", "multiturn", "--param", "ratio=1.5"], "--param ratio=1.5: must be <= 0.99"),
    (["--method", "snapkv", "--task", "multiturn", "--param", "budget=0"], "--param budget=0: must be >= 1"),
    (["--method", "full", "--task", "multiturn", "--dtype", "int3"], "--dtype 'int3'"),
    (["--method", "full", "--task", "multiturn", "--limit", "0"], "--limit must be at least 1"),
    (["--method", "full", "--task", "multiturn.scbench_kv", "--data", "/nonexistent.jsonl"], "no such file"),
    (["--method", "full"], "Missing option '--task'"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUTS, ids=[m[:30] for _, m in BAD_INPUTS])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    result = run_cli("eval", *args, "--out", str(tmp_path), env={"HF_HUB_OFFLINE": "1"})
    assert_usage_error(result, message, tmp_path)


def test_show_rejects_missing_and_foreign_files(tmp_path):
    missing = run_cli("show", str(tmp_path / "nope"))
    assert missing.returncode == 2 and missing.stderr.startswith("error: no such results file")
    foreign = tmp_path / "x.parquet"
    foreign.write_text("not parquet")
    bad = run_cli("show", str(foreign))
    assert bad.returncode == 2 and "not a readable Parquet file" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_list_commands_show_methods_tasks_and_groups():
    wide = {"COLUMNS": "250"}
    methods = run_cli("list", "methods", env=wide)
    assert methods.returncode == 0 and any(line.split()[:2] == ["full", "kv"] for line in methods.stdout.splitlines())
    tasks = run_cli("list", "tasks", env=wide)
    assert tasks.returncode == 0
    for name in ("multiturn.passkey", "multiturn.kv", "multiturn.vt", "multiturn.qa", "multiturn.scbench_kv",
                 "group multiturn: multiturn.passkey", "first_int", "hub: microsoft/SCBench"):
        assert name in tasks.stdout, name
