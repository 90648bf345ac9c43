"""The two pair protocols and the online embedding mode, checked against plain numpy computations of their
definitions (docs/semantic.md): on files of GPTCache's published pair shapes, both protocols reproduce the
outcome of every pair exactly; online embedding charges each request its own encode time, and `show`'s
break-even hit rate is computed from those per-request times."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, run_cli
from rich.console import Console

from cachebench.registry import build_method
from cachebench.runs import EvalRequest
from cachebench.semantic.evaluate import build_stream, run_semantic_eval
from cachebench.show import show
from cachebench.taskspec import resolve_tasks

FIXTURES = REPO / "tests" / "fixtures" / "semantic"
WIDE = {"COLUMNS": "250"}


@pytest.fixture(scope="module")
def minilm():
    from cachebench.semantic.embedder import load_embedder

    return load_embedder()


def reference_outcomes(stream, vectors: dict[str, np.ndarray], threshold: float, protocol: str) -> list[str]:
    """The definitions in numpy. retrieval: every first item is an entry; the second item's nearest entry is
    served when its cosine reaches the threshold (TP: same class, FP: another); a miss is FN when some entry has
    the second item's class, else TN. pairwise: the pair's first item is the only entry."""
    firsts = np.stack([vectors[first.prompt] for first, _ in stream.pairs])
    first_classes = np.array([first.class_id for first, _ in stream.pairs])
    out = []
    for index, (first, second) in enumerate(stream.pairs):
        query = vectors[second.prompt]
        if protocol == "pairwise":
            similarity, served, servable = float(vectors[first.prompt] @ query), first.class_id, \
                first.class_id == second.class_id
        else:
            scores = firsts @ query
            nearest = int(np.argmax(scores))
            similarity, served = float(scores[nearest]), first_classes[nearest]
            servable = bool(np.any(first_classes == second.class_id))
        assert abs(similarity - threshold) > 1e-5, "a pair on the threshold: pick another threshold"
        if similarity >= threshold:
            out.append("TP" if served == second.class_id else "FP")
        else:
            out.append("FN" if servable else "TN")
        assert index == len(out) - 1
    return out


@pytest.mark.parametrize("fixture", ["gptcache_mock.json", "gptcache_full.json"])
@pytest.mark.parametrize("protocol", ["retrieval", "pairwise"])
@pytest.mark.parametrize("index", ["exact", "hnsw"])
def test_both_pair_protocols_reproduce_numpy_on_gptcache_files(minilm, tmp_path, fixture, protocol, index):
    request = EvalRequest(method="threshold", task="semantic.gptcache-pairs", data=str(FIXTURES / fixture),
                          params=("threshold=0.7", f"index={index}", "store=memory"), pair_protocol=protocol,
                          embedding="precomputed", llm_cost="800", out=tmp_path)
    specs = resolve_tasks(request.task)
    stream = build_stream(specs[0], request)
    texts = list(dict.fromkeys(item.prompt for item in stream.all_requests()))  # as the runner embeds them
    vectors = dict(zip(texts, minilm.encode(texts), strict=True))
    expected = reference_outcomes(stream, vectors, 0.7, protocol)
    outcome = run_semantic_eval(request, specs, build_method("threshold", list(request.params)), embedder=minilm)
    rows = outcome.rows
    assert [row["outcome"] for row in rows] == expected
    assert {row["mode"] for row in rows} == {f"pair-{protocol}"} and {row["embed_mode"] for row in rows} == {
        "precomputed"}
    if fixture == "gptcache_mock.json" and protocol == "retrieval":  # all paraphrases: every miss lost a hit
        assert "TN" not in expected and set(expected) >= {"TP", "FN"}
    if fixture == "gptcache_full.json" and protocol == "pairwise":
        assert set(expected) >= {"TP", "TN"}  # label-0 pairs below the threshold are TN only here


def test_recall_is_not_inflated_by_a_nearer_entry_of_another_class(minilm, tmp_path):
    """A second item whose nearest entry belongs to another class while its own first item is in the cache is a
    missed positive: FN under retrieval, so recall = TP / (TP + FN) counts it."""
    pairs = [{"origin": "reverse a string in Python", "similar": "python reverse string"},
             {"origin": "How do I flip the order of elements of a Python list?", "similar": "reverse list python"}]
    data = tmp_path / "pairs.json"
    data.write_text(json.dumps(pairs))
    request = EvalRequest(method="threshold", task="semantic.gptcache-pairs", data=str(data),
                          params=("threshold=0.99", "index=exact", "store=memory"), pair_protocol="retrieval",
                          llm_cost="800", out=tmp_path / "out")
    rows = run_semantic_eval(request, resolve_tasks(request.task), build_method("threshold", list(request.params)),
                             embedder=minilm).rows
    assert [row["outcome"] for row in rows] == ["FN", "FN"]
    # the second query's nearest entry is the string question, not its own list question
    vectors = minilm.encode(["reverse a string in Python", "How do I flip the order of elements of a Python list?",
                             "reverse list python"])
    assert vectors[0] @ vectors[2] > vectors[1] @ vectors[2]


def test_online_embedding_charges_each_request_its_own_encode(minilm, tmp_path):
    request = EvalRequest(method="threshold", task="semantic.stream", limit=120, llm_cost="800", out=tmp_path / "a")
    rows = run_semantic_eval(request, resolve_tasks(request.task), build_method("threshold", []),
                             embedder=minilm).rows
    embed = np.array([row["embed_ms"] for row in rows])
    assert {row["embed_mode"] for row in rows} == {"online"} and np.all(embed > 0)
    assert np.percentile(embed, 95) > np.percentile(embed, 50)  # a distribution, not one mean on every row
    assert len(set(embed.tolist())) > len(rows) // 2

    batched = EvalRequest(method="threshold", task="semantic.stream", limit=40, llm_cost="800", embed_batch=8,
                          out=tmp_path / "b")
    rows8 = run_semantic_eval(batched, resolve_tasks(batched.task), build_method("threshold", []),
                              embedder=minilm).rows
    assert {row["embed_mode"] for row in rows8} == {"online:8"}
    for start in range(0, 40, 8):  # a micro-batch's requests all wait for the whole encode call
        assert len({row["embed_ms"] for row in rows8[start:start + 8]}) == 1
    assert len({row["embed_ms"] for row in rows8}) > 1

    exact = EvalRequest(method="exact", task="semantic.stream", limit=400, llm_cost="800", out=tmp_path / "c")
    calls = []
    original = minilm.model.encode
    minilm.model.encode = lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs)
    try:
        rows_exact = run_semantic_eval(exact, resolve_tasks(exact.task), build_method("exact", []),
                                       embedder=minilm).rows
    finally:
        minilm.model.encode = original
    assert calls == []  # the exact cache never embeds
    assert {row["embed_mode"] for row in rows_exact} == {"none"} and {row["embed_ms"] for row in rows_exact} == {0.0}
    assert sum(row["hit"] for row in rows_exact) > 0

    records = show_json(tmp_path / "a")
    overall = next(r for r in records if r["category"] == "all")
    judged = [row for row in rows if not row["warmup"]]
    overhead = float(np.mean([row["embed_ms"] + row["lookup_ms"] for row in judged]))
    fetch = float(np.median([row["fetch_ms"] for row in judged if row["hit"]]))
    hits = [row for row in judged if row["hit"]]
    wrong = sum(row["outcome"] == "FP" or row["stale"] for row in hits) / len(hits)
    assert overall["break_even_hit_rate"] == pytest.approx(overhead / (800 - fetch - wrong * 800), rel=1e-9)
    assert overall["embed_p95_ms"] > overall["embed_p50_ms"] > 0


def show_json(folder: Path) -> list[dict]:
    out = io.StringIO()
    import contextlib

    with contextlib.redirect_stdout(out):
        show([folder], Console(file=io.StringIO()), output="json")
    return json.loads(out.getvalue())


def test_show_prints_the_full_pair_table_with_intervals(tmp_path):
    data = FIXTURES / "qqp.jsonl"
    for protocol in ("pairwise", "retrieval"):
        result = run_cli("eval", "--method", "threshold", "--task", "semantic.qqp", "--data", str(data),
                         "--pair-protocol", protocol, "--llm-cost-ms", "800", "--out", str(tmp_path), "--quiet")
        assert result.returncode == 0, result.stderr
    shown = run_cli("show", str(tmp_path), env=WIDE)
    assert shown.returncode == 0, shown.stderr
    for text in ("semantic.qqp (pairs, pairwise: each pair on its own)", "semantic.qqp (pairs, retrieval",
                 "hit 95% CI", "err 95% CI", "prec 95% CI", "recall 95% CI", "F1 95% CI", "F0.5 95% CI"):
        assert text in shown.stdout, text
    assert "semantic.qqp (pairs, pairwise: each pair on its own): outcomes" in shown.stdout
    records = json.loads(run_cli("show", str(tmp_path), "--format", "json").stdout)
    assert {r["mode"] for r in records} == {"pair-pairwise", "pair-retrieval"}
    for record in records:
        for name in ("hit_rate", "error_rate", "precision", "recall", "f1", "f05"):
            low, high, value = record[f"{name}_low"], record[f"{name}_high"], record[name]
            assert low is not None and high is not None and low <= value <= high, (name, record)


def test_pair_protocol_and_embedding_options_are_checked_in_one_line(tmp_path):
    cases = [
        (["--task", "semantic.stream", "--pair-protocol", "pairwise"], "--pair-protocol applies to pair tasks"),
        (["--task", "semantic.pairs", "--pair-protocol", "nearest"], "--pair-protocol 'nearest'"),
        (["--task", "semantic.stream", "--embedding", "lazy"], "--embedding 'lazy'"),
        (["--task", "semantic.stream", "--embed-batch", "0"], "--embed-batch must be between 1"),
        (["--task", "semantic.stream", "--embedding", "precomputed", "--embed-batch", "4"],
         "--embed-batch applies to --embedding online"),
        (["--task", "semantic.qqp", "--requests", "50"], "--requests applies to generated tasks"),
        (["--task", "semantic.stream", "--requests", "0"], "--requests must be between 1"),
    ]
    for args, message in cases:
        result = run_cli("eval", "--method", "threshold", *args, "--llm-cost-ms", "800", "--out", str(tmp_path))
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    kv = run_cli("eval", "--method", "full", "--task", "multiturn", "--pair-protocol", "pairwise",
                 "--out", str(tmp_path))
    assert kv.returncode == 2 and "--pair-protocol applies to semantic caches" in kv.stderr
    assert not list(tmp_path.glob("*.parquet"))


def test_requests_sizes_a_generated_stream_through_eval(minilm, tmp_path):
    """--requests reaches the generator: 3,000 requests where the task's own size is 2,000, with more users."""
    request = EvalRequest(method="exact", task="semantic.stream", requests=3000, llm_cost="800", out=tmp_path)
    rows = run_semantic_eval(request, resolve_tasks(request.task), build_method("exact", []), embedder=minilm).rows
    assert len(rows) == 3000 and sum(row["warmup"] for row in rows) == 300
    assert len({row["user"] for row in rows}) == 12  # max(8, 3000 // 250)
