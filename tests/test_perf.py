"""`cachebench perf` on the CPU with a tiny random shape (two layers of SmolLM2-135M): progress on stderr, the table
with floors and no figure printed as a misleading 0, result rows that the readers and `show` take, smaller caches
for eviction methods, a memory budget that fits more sequences of a smaller cache, and one-line errors for bad
input, the same as eval's for the same bad parameter."""

from __future__ import annotations

import json
import math
import re

import pytest
from conftest import AUTO_DTYPE, REPO, assert_usage_error, run_cli

from cachebench.results import read_results

LAYERS, KV_HEADS, HEAD_DIM = 2, 3, 64  # the tiny shape's cache: K and V per token in every layer
# --dtype auto: bf16 with AVX-512, else fp32 (bf16 matmuls without it are slow); sizes follow what it picks here
BYTES_PER_TOKEN = LAYERS * 2 * KV_HEADS * HEAD_DIM * AUTO_DTYPE.itemsize
BUDGET_GIB = 0.04 * AUTO_DTYPE.itemsize  # weights and caches both scale with the dtype


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    """`random:<config.json>` of SmolLM2-135M's shape cut to two layers: seconds to build and to run."""
    preset = json.loads((REPO / "cachebench/models/presets/smollm2-135m.json").read_text())
    path = tmp_path_factory.mktemp("shape") / "tiny.json"
    path.write_text(json.dumps({**preset, "num_hidden_layers": LAYERS}))
    return f"random:{path}"


def small(model: str) -> list[str]:
    return ["perf", "--model", model, "--repeats", "2", "--decode-steps", "2", "--bucket", "64"]


def table_rows(stdout: str) -> list[dict[str, str]]:
    """The Markdown table of the report, as dicts keyed by its header."""
    lines = [line for line in stdout.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")), strict=True))
            for line in lines[2:]]


def test_perf_writes_result_rows_shows_progress_and_no_zero_figures(tmp_path, tiny):
    out, report = tmp_path / "rows", tmp_path / "perf.json"
    result = run_cli(*small(tiny), "--method", "full", "--method", "snapkv", "--param", "ratio=0.75",
                     "--context", "64", "--context", "128", "--out", str(out), "--json", str(report))
    assert result.returncode == 0, result.stderr
    assert "warning: no GPU" in result.stderr
    # progress: the load, the floors, and each of the four cells started and done, with elapsed seconds
    progress = [line for line in result.stderr.splitlines() if re.match(r"\[\s*\d+\.\ds\] ", line)]
    assert any("loading" in line for line in progress) and any("floors" in line for line in progress)
    assert sum("started" in line for line in progress) == 4 and sum("done in" in line for line in progress) == 4
    assert "wrote 8 rows to" in result.stderr

    # the table: floors in units that show their digits, no peak or throughput printed as 0
    assert "floors measured here" in result.stdout and "B/s" in result.stdout and "FLOP/s" in result.stdout
    assert not re.search(r"\b0\.0 [GT]FLOP/s|\b0 [GT]B/s", result.stdout), result.stdout
    cells = table_rows(result.stdout)
    assert {(c["method"], c["params"], c["context"]) for c in cells} == {
        ("full", "defaults", "64"), ("full", "defaults", "128"), ("snapkv", "ratio=0.75", "64"),
        ("snapkv", "ratio=0.75", "128")}
    for cell in cells:
        assert cell["peak MiB"] == "–" or float(cell["peak MiB"].replace(",", "")) > 0, cell
        assert float(cell["tokens/s"].replace(",", "")) > 0 and float(cell["TTFT ms"].replace(",", "")) > 0, cell
    if any(cell["peak MiB"] == "–" for cell in cells):
        assert "– peak:" in result.stdout  # a figure not measured says why

    # --json keeps the cells, their repeats and the floors
    data = json.loads(report.read_text())
    by_cell = {(r["method"], r["context"]): r for r in data["rows"]}
    for context in (64, 128):
        full, snap = by_cell[("full", context)], by_cell[("snapkv", context)]
        assert full["kv_bytes"] == context * BYTES_PER_TOKEN
        assert snap["kv_bytes"] < full["kv_bytes"] and snap["params"]["ratio"] == 0.75
        assert len(full["repeats"]) == 2 and full["prefill_floor_ms"] > 0 and not full["graph"]
    assert data["floors"]["bandwidth"] > 1e8 and data["floors"]["flops"] > 1e8

    # the rows: one per repeat of every cell, track perf, read back by the shared reader
    table = read_results([out]).to_pylist()
    assert len(table) == 8 and {row["track"] for row in table} == {"perf"}
    assert len({row["run_id"] for row in table}) == 1
    for row in table:
        assert row["task"] == "perf" and row["mode"] == "perf" and row["turn"] == 0 and row["score"] is None
        assert row["model"] == tiny and row["model_weights"] == "random" and row["device"] == "cpu"
        assert row["timer"] == "perf_counter" and row["run_complete"] and row["error"] is None
        assert row["context_tokens"] == row["context_length"] and row["episode_id"] in {"0", "1"}
        assert row["prefill_ms"] > 0 and row["decode_ms_per_token"] > 0 and row["kv_bytes"] > 0
        assert row["ttft_ms"] > row["prefill_ms"] and row["request_ttft_ms"] == row["ttft_ms"]
        assert row["peak_kv_bytes"] >= row["kv_bytes"]
        assert row["peak_mem_bytes"] is None or row["peak_mem_bytes"] > 0
        expected = '{"budget":null,"kernel":7,"pooling":"avg","ratio":0.75,"window":32}'
        assert row["method_params"] == ("{}" if row["method"] == "full" else expected)
        assert row["cell_params"] == row["method_params"]
        assert row["git_sha"] and row["cachebench_version"] and row["created_at"] is not None
    assert {row["kv_bytes"] for row in table if row["method"] == "full"} == {64 * BYTES_PER_TOKEN,
                                                                               128 * BYTES_PER_TOKEN}
    assert all(math.isfinite(row["decode_ms_per_token"]) for row in table)

    shown = run_cli("show", str(out))
    assert shown.returncode == 0, shown.stderr
    assert "snapkv" in shown.stdout and "full" in shown.stdout


def test_memory_budget_fits_more_sequences_of_a_smaller_cache(tmp_path, tiny):
    """The shorthand name:k=v form sets one method's parameters; a quarter of the cache fits about 3-4x the batch."""
    out = tmp_path / "perf.json"
    result = run_cli(*small(tiny), "--repeats", "1", "--method", "full", "--method", "snapkv:ratio=0.75",
                     "--context", "2048", "--memory-budget-gib", str(BUDGET_GIB), "--json", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    assert "started" not in result.stderr  # --quiet: no progress lines
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["full"]["batch"] >= 2
    assert rows["snapkv"]["batch"] > 2 * rows["full"]["batch"]


@pytest.mark.parametrize(("args", "message"), [
    (["--context", "8"], "--context must be at least 16"),
    (["--context", "9000"], "more than the model's 8192-token window"),
    (["--method", "h2o"], "--method h2o: its cache does not fit static decode buffers"),
    (["--method", "threshold"], "--method threshold: perf measures KV-cache methods"),
    (["--method", "nosuch"], "nosuch"),
    (["--memory-budget-gib", "-1"], "--memory-budget-gib must be positive"),
    (["--method", "snapkv", "--param", "ratio"], "--param 'ratio': expected name=value"),
    (["--method", "full", "--param", "ratio=0.5"], "method 'full' takes no parameters"),
    (["--method", "full", "--method", "snapkv", "--param", "ratoi=0.5"], "unknown parameter of 'snapkv' 'ratoi'"),
])
def test_bad_input_is_one_line(tmp_path, args, message):
    assert_usage_error(run_cli(*small("random:smollm2-135m"), "--out", str(tmp_path), *args), message, tmp_path)


@pytest.mark.parametrize("bad", ["ratio=2", "window=abc"])
def test_bad_param_is_eval_s_error(tmp_path, bad):
    """perf validates --param with eval's helpers: the same single line, exit 2, nothing written."""
    perf = run_cli(*small("random:smollm2-135m"), "--method", "snapkv", "--param", bad, "--out", str(tmp_path))
    assert_usage_error(perf, "--param", tmp_path)
    evaluated = run_cli("eval", "--method", "snapkv", "--task", "multiturn.passkey", "--param", bad,
                        "--out", str(tmp_path))
    assert_usage_error(evaluated, "--param", tmp_path)
    assert perf.stderr.strip() == evaluated.stderr.strip()


def test_unmeasured_peak_prints_a_dash_with_its_reason_never_zero():
    """A CPU peak the process's RSS could not show is "–" with a note; slow throughput keeps its digits."""
    from cachebench.perf.floors import Floors
    from cachebench.perf.measure import PerfRow, Repeat
    from cachebench.perf.run import PerfReport

    repeat = Repeat(prefill_ms=900.0, ttft_ms=1100.0, decode_ms_per_token=2400.0)
    row = PerfRow(method="full", params={}, label="defaults", context=4096, batch=1, kv_bytes=3 << 20,
                  peak_kv_bytes=3 << 20, peak_mem_bytes=None, batch_peak_mem_bytes=None, prefill_ms=900.0,
                  prefill_floor_ms=300.0, eager_decode_ms=2400.0, static_decode_ms=2300.0, decode_floor_ms=800.0,
                  graph=False, repeats=[repeat])
    floors = Floors(bandwidth=9e9, flops=4e10, copy_bytes=256 << 20, matmul_n=2048)
    text = PerfReport("random:x", "bfloat16", "cpu", "perf_counter, median", floors, [row]).render()
    cell = table_rows(text)[0]
    assert cell["peak MiB"] == "–" and "– peak:" in text
    assert cell["tokens/s"] == "0.435"  # 1 / 2.3 s, not 0
    assert "9 GB/s" in text and "40 GFLOP/s" in text
