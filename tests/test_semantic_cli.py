"""The semantic track as a user runs it: `cachebench eval` on the offline default, on GPTCache's pair files, on
Redis and Chroma servers, with the LLM's cost measured; `cachebench show` per category; bad input in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import REPO, assert_usage_error, run_cli
from semantic_servers import chroma_url, redis_url  # noqa: F401

from cachebench.results import SCHEMA_VERSION

FIXTURES = REPO / "tests" / "fixtures" / "semantic"
WIDE = {"COLUMNS": "250"}


def rows_of(folder: Path) -> list[dict]:
    files = list(folder.glob("*.parquet"))
    assert len(files) == 1, files
    table = pq.read_table(files[0])
    assert table.schema.metadata[b"cachebench.schema_version"] == SCHEMA_VERSION.encode()
    return table.to_pylist()


def test_category_aware_on_the_offline_default_writes_rows_and_shows_categories(tmp_path):
    result = run_cli("eval", "--method", "category-aware", "--task", "semantic", "--limit", "300",
                     "--llm-cost-ms", "code=900,conversation=600,factual=500,time-sensitive=700,gptcache=800",
                     "--out", str(tmp_path), "--quiet")
    assert result.returncode == 0, result.stderr
    rows = rows_of(tmp_path)
    stream = [r for r in rows if r["task"] == "semantic.stream"]
    pairs = [r for r in rows if r["task"] == "semantic.pairs"]
    assert len(stream) == 300 and pairs and all(r["mode"] == "pair-retrieval" for r in pairs)
    assert {r["category"] for r in stream} == {"code", "conversation", "factual", "time-sensitive"}
    assert sum(r["warmup"] for r in stream) == 30 and all(r["warmup"] == (r["turn"] < 30) for r in stream)
    for row in rows:
        assert row["outcome"] in ("TP", "FP", "FN", "TN") and row["error"] is None
        assert row["hit"] == (row["outcome"] in ("TP", "FP")) and row["lookup_ms"] > 0 and row["embed_ms"] > 0
        assert row["score"] == (0.0 if row["outcome"] == "FP" or row["stale"] else 1.0)
        assert (row["served_class"] == row["class_id"]) == (row["outcome"] == "TP")
        assert row["llm"] == "set" and row["model"] == "all-MiniLM-L6-v2" and row["cache_entries"] > 0
        assert (row["fetch_ms"] is not None) == row["hit"]
    assert {r["llm_ms"] for r in stream if r["category"] == "code"} == {900.0}
    hits = [r for r in stream if r["hit"]]
    assert len(hits) > 30 and all(r["prediction"] for r in hits)
    assert json.loads(stream[0]["method_params"])["store"] == "sqlite"  # the embedded default document store
    shown = run_cli("show", str(tmp_path), env=WIDE)
    assert shown.returncode == 0, shown.stderr
    for text in ("semantic.stream (stream): quality", "time-sensitive", "conversation", "err 95% CI", "h*",
                 "semantic.pairs (pairs, retrieval", "F0.5 95% CI", "recall 95% CI"):
        assert text in shown.stdout, text


def test_gptcache_pair_file_reports_its_outcome_counts(tmp_path):
    data = FIXTURES / "gptcache_mock.json"
    result = run_cli("eval", "--method", "threshold", "--task", "semantic.gptcache-pairs", "--data", str(data),
                     "--param", "threshold=0.8", "--llm-cost-ms", "800", "--out", str(tmp_path), "--quiet")
    assert result.returncode == 0, result.stderr
    rows = rows_of(tmp_path)
    assert len(rows) == len(json.loads(data.read_text()))  # one looked-up `similar` per pair
    counts = {code: sum(r["outcome"] == code for r in rows) for code in ("TP", "FP", "FN", "TN")}
    assert counts["TP"] > 0
    shown = run_cli("show", str(tmp_path), env=WIDE)
    lines = [line.split() for line in shown.stdout.splitlines() if line.strip().startswith("threshold")]
    assert lines[0][3] == str(len(rows))  # quality: the number of pairs
    assert lines[1][3:7] == [str(counts[code]) for code in ("TP", "FP", "FN", "TN")]  # outcomes


def test_stores_on_real_redis_and_chroma_servers_serve_the_same_hits(tmp_path, redis_url, chroma_url):  # noqa: F811
    outcomes = {}
    for store, extra in (("memory", []), ("redis", [f"redis_url={redis_url}"]),
                         ("chroma", [f"chroma_url={chroma_url}"])):
        out = tmp_path / store
        args = ["eval", "--method", "threshold", "--task", "semantic.stream", "--limit", "120", "--llm-cost-ms",
                "800", "--param", f"store={store}", "--param", "threshold=0.9",
                *(a for e in extra for a in ("--param", e)), "--out", str(out), "--quiet"]
        result = run_cli(*args)
        assert result.returncode == 0, result.stderr
        rows = rows_of(out)
        assert all(r["error"] is None for r in rows)
        hits = [r for r in rows if r["hit"]]
        assert hits and all(r["fetch_ms"] > 0 and r["prediction"] for r in hits)
        outcomes[store] = [r["outcome"] for r in rows]
    # both HNSW indexes (hnswlib here, Chroma's own there) are approximate, but on 120 requests they find the same
    assert outcomes["redis"] == outcomes["memory"]
    agree = sum(a == b for a, b in zip(outcomes["chroma"], outcomes["memory"], strict=True))
    assert agree >= 0.97 * len(outcomes["memory"])


def test_llm_cost_is_measured_with_the_embedded_model(tmp_path):
    result = run_cli("eval", "--method", "exact", "--task", "semantic.stream", "--limit", "40",
                     "--max-new-tokens", "4", "--out", str(tmp_path), "--quiet")
    assert result.returncode == 0, result.stderr
    rows = rows_of(tmp_path)
    assert {r["llm"] for r in rows} == {"SmolLM2-135M-Instruct"}
    per_category = {r["category"]: r["llm_ms"] for r in rows}
    assert all(cost > 1.0 for cost in per_category.values()) and len(per_category) >= 3


BAD = [
    (["--method", "threshold", "--task", "multiturn.passkey"], "is a KV-cache task"),
    (["--method", "full", "--task", "semantic.stream"], "is a semantic-cache task"),
    (["--method", "threshold", "--task", "semantic.stream", "--llm-cost-ms", "fast"], "--llm-cost-ms 'fast'"),
    (["--method", "threshold", "--task", "semantic.stream", "--llm-cost-ms", "code=-3"], "must be positive"),
    (["--method", "threshold", "--task", "semantic.stream", "--mode", "multi-turn"], "--mode applies to KV tasks"),
    (["--method", "threshold", "--task", "semantic.stream", "--param", "threshold=2"], "must be <= 1.0"),
    (["--method", "threshold", "--task", "semantic.stream", "--param", "store=mongo"], "must be one of"),
    (["--method", "threshold", "--task", "semantic.stream", "--llm-cost-ms", "1", "--param", "store=redis",
      "--param", "redis_url=redis://127.0.0.1:1/0"], "cannot reach Redis"),
    (["--method", "threshold", "--task", "semantic.stream", "--llm-cost-ms", "1", "--param", "store=chroma",
      "--param", "chroma_url=http://127.0.0.1:1"], "127.0.0.1:1"),
    (["--method", "category-aware", "--task", "semantic.stream", "--param", "policy={code: {ttl: -5}}"], "ttl >= 0"),
    (["--method", "threshold", "--task", "semantic.gptcache-pairs"], "--data"),
    (["--method", "threshold", "--task", "semantic.stream", "--embedder", "/nonexistent/embedder"],
     "--embedder /nonexistent/embedder"),
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[m[:30] for _, m in BAD])
def test_bad_semantic_input_is_one_line_and_exit_2(tmp_path, args, message):
    result = run_cli("eval", *args, "--out", str(tmp_path), env={"HF_HUB_OFFLINE": "1"})
    assert_usage_error(result, message, tmp_path)


def test_malformed_stream_file_names_file_and_record(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"origin": "a question"}, {"similar": "only half"}]))
    result = run_cli("eval", "--method", "threshold", "--task", "semantic.gptcache-pairs", "--data", str(bad),
                     "--llm-cost-ms", "1", "--out", str(tmp_path))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert str(bad) in result.stderr and "record" in result.stderr
