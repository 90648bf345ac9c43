"""The semantic track's judging, scoring, cost model and the category-aware cache, on controlled vectors and on
the real embedder; tenant isolation under real threads; every registered semantic method through a short stream
run and `show`."""

from __future__ import annotations

import dataclasses
import io
import json
import threading

import numpy as np
import pytest
from conftest import declared, declares, methods_where
from rich.console import Console

from cachebench.errors import UsageError
from cachebench.registry import build_method
from cachebench.runs import EvalRequest
from cachebench.semantic.evaluate import run_semantic_eval
from cachebench.semantic.method import Decision, Query
from cachebench.semantic.runner import StreamRunner, _Inserted, judge
from cachebench.semantic.scoring import cost_model, frontier_area, rates
from cachebench.semantic.stream import Request, Stream
from cachebench.show import show
from cachebench.stats import wilson_interval
from cachebench.taskspec import resolve_tasks

DIM = 8


def unit(*values: float) -> np.ndarray:
    vector = np.zeros(DIM, dtype=np.float32)
    vector[: len(values)] = values
    return vector / np.linalg.norm(vector)


def at_similarity(similarity: float) -> np.ndarray:
    """A unit vector whose cosine with e0 is `similarity`."""
    return unit(similarity, float(np.sqrt(1 - similarity**2)))


def query(vector: np.ndarray, category: str = "code", user: str = "u0", t: float = 0.0, prompt: str = "q") -> Query:
    return Query(prompt=prompt, embedding=vector, category=category, user=user, timestamp=t)


def opened(name: str, *params: str):
    method = build_method(name, ["index=exact", "store=memory", *params])
    method.open(DIM, "test")
    return method


def request(class_id: str, response: str = "r") -> Request:
    return Request("x", "p", class_id, "code", 0.0, response=response)


def test_judge_follows_vcache_definitions_and_marks_stale_hits():
    entries = {1: _Inserted("a", "old", "u0"), 2: _Inserted("b", "r", "u0")}
    assert judge(Decision(hit=True, key=1), request("a", "old"), entries, False) == ("TP", False)
    assert judge(Decision(hit=True, key=1), request("a", "new"), entries, False) == ("TP", True)
    assert judge(Decision(hit=True, key=2), request("a"), entries, True) == ("FP", False)
    # a miss is FN exactly when a right entry was there to serve, whatever the nearest neighbour was
    assert judge(Decision(hit=False, nearest_key=2), request("a"), entries, True) == ("FN", False)
    assert judge(Decision(hit=False, nearest_key=1), request("a"), entries, False) == ("TN", False)
    assert judge(Decision(hit=False), request("a"), entries, False) == ("TN", False)


def test_a_miss_is_fn_when_a_right_entry_sits_behind_a_nearer_wrong_one(minilm):
    """The retrieval protocol's recall trap: the nearest entry belongs to another class, a right entry sits further
    away. vCache's nearest-neighbour rule calls the miss TN and drops it out of recall; here it is FN. Entries of
    another user's partition, expired ones and ones whose response went stale are not servable."""
    stream = Stream("t", "stream", [
        Request("r0", "How do I flip the order of elements of a Python list?", "list", "code", 0.0, response="list"),
        Request("r1", "reverse a string in Python", "string", "code", 1.0, response="string"),
        Request("r2", "reverse list python", "list", "code", 2.0, response="list"),
    ])
    method = opened_dim("threshold", minilm.dim, "threshold=0.99")
    results = StreamRunner(method, minilm).run(stream)
    assert [r.outcome for r in results] == ["TN", "TN", "FN"]
    nearest = results[2].decision.nearest_key
    assert method.meta[nearest].created == 1.0  # its nearest neighbour was the string entry: vCache would say TN

    scoped = opened_dim("threshold", minilm.dim, "threshold=0.99", "scope=user")
    other_user = Stream("t", "stream", [dataclasses.replace(stream.requests[0], user="u1"), stream.requests[2]])
    assert [r.outcome for r in StreamRunner(scoped, minilm).run(other_user)] == ["TN", "TN"]
    changed = Stream("t", "stream", [stream.requests[0], dataclasses.replace(stream.requests[2], response="new")])
    assert [r.outcome for r in StreamRunner(opened_dim("threshold", minilm.dim, "threshold=0.99"),
                                            minilm).run(changed)] == ["TN", "TN"]


def test_rates_and_intervals():
    outcomes = ["TP"] * 6 + ["FP"] * 2 + ["FN"] * 2 + ["TN"] * 10
    r = rates(outcomes, [True] + [False] * 19)
    assert (r.n, r.tp, r.fp, r.fn, r.tn, r.stale) == (20, 6, 2, 2, 10, 1)
    assert r.hit_rate == pytest.approx(0.4) and r.error_rate == pytest.approx(0.1)
    assert r.precision == pytest.approx(0.75) and r.recall == pytest.approx(0.75) and r.f1 == pytest.approx(0.75)
    assert r.f05 == pytest.approx(0.75) and r.stale_rate == pytest.approx(0.05)
    assert rates(["TP", "FP", "FP", "FN"], [False] * 4).f05 == pytest.approx(1.25 * (1 / 3) * 0.5 / (0.25 / 3 + 0.5))
    low, high = wilson_interval(r.fp, r.n)
    assert low < 0.1 < high and high - low < 0.35


def test_cost_model_break_even_and_saving():
    cost = cost_model(hit_rate=0.2, wrong_hits=1, hits=10, overhead_ms=2.0, fetch_ms=1.0, llm_ms=100.0)
    gain = 100 - 1 - 0.1 * 100  # a hit saves C - F, minus the wrong share times the penalty (default C)
    assert cost.break_even == pytest.approx(2.0 / gain)
    assert cost.saving_ms == pytest.approx(0.2 * gain - 2.0)
    assert cost.saving_share == pytest.approx(cost.saving_ms / 100)
    remote = cost_model(0.2, 1, 10, overhead_ms=30.0, fetch_ms=1.0, llm_ms=100.0)
    assert remote.break_even > 10 * cost.break_even  # the paper's point: lookup cost sets the break-even hit rate
    assert np.isinf(cost_model(0.5, 5, 5, 2.0, 1.0, 100.0).break_even)  # every hit wrong: never pays


def test_frontier_area_is_the_mean_best_hit_rate_over_error_budgets():
    assert frontier_area([(0.0, 0.5)], 0.1) == pytest.approx(0.5)
    assert frontier_area([(0.05, 0.4), (0.1, 0.6)], 0.1) == pytest.approx((0.05 * 0.0 + 0.05 * 0.4) / 0.1)
    better = frontier_area([(0.0, 0.3), (0.05, 0.5)], 0.1)
    worse = frontier_area([(0.02, 0.3), (0.08, 0.5)], 0.1)
    assert better > worse


def test_category_aware_thresholds_differ_by_category():
    method = opened("category-aware", "policy={code: {threshold: 0.95}, conversation: {threshold: 0.8}}")
    for category in ("code", "conversation"):
        seed = query(unit(1.0), category)
        method.record_miss(seed, f"{category} answer", method.lookup(seed))
    assert not method.lookup(query(at_similarity(0.9), "code")).hit  # a near-duplicate code query: strict
    served = method.lookup(query(at_similarity(0.9), "conversation"))
    assert served.hit and served.response == "conversation answer"
    assert not method.lookup(query(at_similarity(0.99), "factual")).hit  # another category's partition


def test_category_aware_ttl_runs_on_the_stream_clock():
    method = opened("category-aware", "policy={time-sensitive: {ttl: 60, threshold: 0.9}}")
    first = query(unit(1.0), "time-sensitive", t=100.0)
    method.record_miss(first, "price 1", method.lookup(first))
    assert method.lookup(query(unit(1.0), "time-sensitive", t=159.0)).hit
    late = method.lookup(query(unit(1.0), "time-sensitive", t=161.0))
    assert not late.hit and method.entries() == 0  # expired entries are evicted when met


def test_category_aware_quota_evicts_least_recently_used():
    method = opened("category-aware", "policy={code: {quota: 2, threshold: 0.99}}")
    vectors = [unit(1.0), unit(0.0, 1.0), unit(0.0, 0.0, 1.0)]
    for index, vector in enumerate(vectors[:2]):
        item = query(vector, t=float(index))
        method.record_miss(item, f"answer {index}", method.lookup(item))
    assert method.lookup(query(vectors[0], t=2.0)).hit  # entry 0 is now the most recently used
    third = query(vectors[2], t=3.0)
    method.record_miss(third, "answer 2", method.lookup(third))
    assert method.entries() == 2
    assert method.lookup(query(vectors[0], t=4.0)).hit and not method.lookup(query(vectors[1], t=4.0)).hit


def test_category_aware_load_relaxes_thresholds():
    policy = "policy={conversation: {threshold: 0.9, relax: 0.1}}"
    idle, busy = opened("category-aware", policy), opened("category-aware", policy, "load=1.0")
    for method in (idle, busy):
        seed = query(unit(1.0), "conversation")
        method.record_miss(seed, "a", method.lookup(seed))
    probe = query(at_similarity(0.85), "conversation")
    assert not idle.lookup(probe).hit and busy.lookup(probe).hit
    assert busy.threshold_for("conversation") == pytest.approx(0.8)
    assert opened("category-aware", policy, "load=0.5").threshold_for("conversation") == pytest.approx(0.9)


@pytest.mark.parametrize("policy", ["{code: 3}", "{code: {threshold: high}}", "{code: {colour: 1}}",
                                    "{code: {ttl: -1}}", "[1, 2]"])
def test_category_aware_rejects_bad_policies_in_one_line(policy):
    with pytest.raises(UsageError) as error:
        build_method("category-aware", [f"policy={policy}"])
    assert "\n" not in str(error.value) and "policy" in str(error.value)


def test_category_aware_bypass_neither_looks_up_nor_inserts():
    method = opened("category-aware", "policy={conversation: {cache: false}}")
    item = query(unit(1.0), "conversation")
    decision = method.lookup(item)
    assert decision.note == "bypass" and method.record_miss(item, "a", decision) is None and method.entries() == 0


# every registered semantic method (a new one is tested here without being listed)
SEMANTIC = methods_where("semantic")


@pytest.mark.parametrize("name", methods_where("semantic", lambda cls: declares(cls, "scope")))
def test_user_scope_isolates_tenants_under_concurrent_threads(name):
    method = opened(name, "scope=user", *declared(name, {"threshold": 0.5}))  # a loose threshold where there is one
    owners: dict[int, str] = {}
    violations, hits, failures = [], [], []
    lock = threading.Lock()
    prompts = [unit(1.0, 0.1 * i) for i in range(5)]

    def user_loop(user: str) -> None:
        try:
            for step in range(200):
                index = step % len(prompts)
                item = query(prompts[index], "conversation", user=user, t=float(step), prompt=f"prompt {index}")
                decision = method.lookup(item)
                if decision.hit:
                    with lock:
                        hits.append(user)
                        if owners.get(decision.key) != user or method.meta[decision.key].user != user:
                            violations.append((user, decision.key))
                else:
                    key = method.record_miss(item, f"{user}'s answer", decision)
                    with lock:
                        owners[key] = user
        except Exception as exc:  # a thread's failure must fail the test, not vanish
            failures.append(exc)

    threads = [threading.Thread(target=user_loop, args=(f"user{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures and not violations
    # each user's repeats do hit, in its own partition (a few times where vCache explores before it may serve)
    assert len(set(hits)) > 1


def test_stream_runner_on_real_embeddings_judges_paraphrases_and_slot_variants(minilm):
    texts = [("reverse a list in Python", "list"), ("reverse a string in Python", "string"),
             ("How do I reverse a Python list?", "list"), ("what is the capital of France", "france"),
             ("Which city is the capital of France?", "france")]
    stream = Stream("t", "stream", [Request(f"r{i}", text, cls, "code", float(i), response=cls)
                                    for i, (text, cls) in enumerate(texts)])
    loose = [r.outcome for r in StreamRunner(opened_dim("threshold", minilm.dim, "threshold=0.7"), minilm).run(stream)]
    strict = [r.outcome for r in StreamRunner(opened_dim("threshold", minilm.dim, "threshold=0.95"),
                                              minilm).run(stream)]
    assert loose[1] == "FP"  # the one-slot variant is a false hit at a loose threshold
    assert strict[1] == "TN" and loose[2] == "TP" and loose[4] == "TP"
    assert strict[4] == "FN"  # a strict threshold misses a paraphrase its nearest neighbour would have answered


def opened_dim(name: str, dim: int, *params: str):
    method = build_method(name, ["index=exact", "store=memory", *params])
    method.open(dim, "test")
    return method


@pytest.fixture(scope="module")
def minilm():
    from cachebench.semantic.embedder import load_embedder

    return load_embedder()


@pytest.mark.parametrize("name", SEMANTIC)
def test_every_semantic_method_runs_a_stream_and_show_renders_its_cell(replaying_minilm, tmp_path, capsys, name):
    """A short run of the generated stream as `cachebench eval` makes it (default index and store, the LLM's cost
    given): a judged row per request, no error, hits and misses adding up; `show` reads the cell back with the
    same counts."""
    request = EvalRequest(method=name, task="semantic.stream", limit=200, llm_cost="800", out=tmp_path)
    outcome = run_semantic_eval(request, resolve_tasks(request.task), build_method(name, []),
                                embedder=replaying_minilm)
    rows = outcome.rows
    assert outcome.errors == 0 and len(rows) == 200 and [row["error"] for row in rows] == [None] * 200
    for row in rows:
        assert row["outcome"] in ("TP", "FP", "FN", "TN") and row["hit"] == (row["outcome"] in ("TP", "FP"))
        assert (row["served_class"] == row["class_id"]) == (row["outcome"] == "TP"), row
        assert (row["prediction"] != "") == row["hit"] and row["lookup_ms"] >= 0 and row["method"] == name
    assert rows[-1]["cache_entries"] > 0  # missed requests were inserted
    judged = [row for row in rows if not row["warmup"]]
    hits = sum(row["hit"] for row in judged)

    show([tmp_path], Console(file=io.StringIO()), output="json")
    cell = next(r for r in json.loads(capsys.readouterr().out) if r["method"] == name and r["category"] == "all")
    assert cell["n"] == len(judged) and cell["errors"] == 0
    assert 0 <= cell["hit_rate"] <= 1 and cell["hit_rate"] == pytest.approx(hits / len(judged))
    table = io.StringIO()
    show([tmp_path], Console(file=table, width=250))
    assert any(line.split()[:1] == [name] for line in table.getvalue().splitlines()), table.getvalue()


@pytest.fixture(scope="module")
def replaying_minilm(minilm):
    """MiniLM keeping the vectors of the texts it embedded: the methods' runs replay one stream."""
    return dataclasses.replace(minilm, remember=True, _memo={})
