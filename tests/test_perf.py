"""`cachebench perf` on the CPU with a small random shape: the table with floors, smaller caches for eviction
methods, a memory budget that fits more sequences of a smaller cache, and one-line errors for bad input."""

from __future__ import annotations

import json

import pytest
from conftest import assert_usage_error, run_cli

SMALL = ["perf", "--model", "random:smollm2-135m", "--repeats", "1", "--decode-steps", "3", "--bucket", "128"]


def test_perf_prints_floors_and_ratios_and_warns_on_cpu(tmp_path):
    out = tmp_path / "perf.json"
    result = run_cli(*SMALL, "--method", "full", "--method", "snapkv:ratio=0.75", "--context", "256",
                     "--context", "512", "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "warning: no GPU" in result.stderr
    assert "floors measured here" in result.stdout and "GB/s" in result.stdout and "TFLOP/s" in result.stdout
    report = json.loads(out.read_text())
    rows = {(r["method"], r["context"]): r for r in report["rows"]}
    assert set(rows) == {("full", 256), ("full", 512), ("snapkv", 256), ("snapkv", 512)}
    for context in (256, 512):
        full, snap = rows[("full", context)], rows[("snapkv", context)]
        assert full["kv_bytes"] == context * 30 * 2 * 3 * 64 * 2  # the preset's shape in bf16
        assert snap["kv_bytes"] == pytest.approx(full["kv_bytes"] / 4, rel=0.02)
        assert full["prefill_ms"] > 0 and full["prefill_floor_ms"] > 0 and full["decode_floor_ms"] > 0
        assert not full["graph"] and full["batch"] == 1
    assert report["floors"]["bandwidth"] > 1e9 and report["floors"]["flops"] > 1e9


def test_memory_budget_fits_more_sequences_of_a_smaller_cache(tmp_path):
    out = tmp_path / "perf.json"
    result = run_cli(*SMALL, "--method", "full", "--method", "snapkv:ratio=0.75", "--context", "2048",
                     "--memory-budget-gib", "0.5", "--json", str(out))
    assert result.returncode == 0, result.stderr
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["full"]["batch"] >= 2
    assert rows["snapkv"]["batch"] > 2 * rows["full"]["batch"]  # a quarter of the cache: about 3-4x the batch


@pytest.mark.parametrize(("args", "message"), [
    (["--context", "8"], "--context must be at least 16"),
    (["--method", "h2o"], "--method h2o: its decode changes the cache"),
    (["--method", "threshold"], "--method threshold: perf measures KV-cache methods"),
    (["--method", "nosuch"], "nosuch"),
    (["--memory-budget-gib", "-1"], "--memory-budget-gib must be positive"),
])
def test_bad_input_is_one_line(tmp_path, args, message):
    assert_usage_error(run_cli(*SMALL, *args), message, tmp_path)
