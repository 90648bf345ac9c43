"""What a semantic method does where it has no policy, said openly: vCache's warning under the pair protocols,
category-aware's declared handling of a category its policy does not name (default / bypass / calibrate), and
`cachebench.semantic.calibrate`, which fits a category policy file from labelled requests.

Everything runs the real embedder on generated streams; the expected numbers are computed here independently
(numpy, exact fractions) from the same vectors and responses, never read back from the code under test.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import numpy as np
import pytest

from cachebench.baselines.semantic.category_aware import DEFAULT_POLICY, parse_policy
from cachebench.errors import UsageError
from cachebench.registry import build_method
from cachebench.runs import EvalRequest
from cachebench.semantic.calibrate import GRID, calibrate, write_policy_yaml
from cachebench.semantic.evaluate import build_stream
from cachebench.semantic.runner import StreamRunner
from cachebench.semantic.stream import Stream
from cachebench.taskspec import resolve_tasks

UNKNOWN = {"factual": "legal", "time-sensitive": "medical"}  # categories renamed to ones no policy names


@pytest.fixture(scope="module")
def minilm():
    """MiniLM keeping the vectors of the texts it embedded: several runs replay one stream."""
    from cachebench.semantic.embedder import load_embedder

    return dataclasses.replace(load_embedder(), remember=True, _memo={})


def generated(task: str, seed: int, limit: int) -> Stream:
    spec = resolve_tasks(task)[0]
    return build_stream(spec, EvalRequest(method="threshold", task=task, seed=seed, limit=limit))


@pytest.fixture(scope="module")
def unknown_stream() -> Stream:
    """The generated stream with two of its categories renamed to ones the built-in policy does not name."""
    stream = generated("semantic.stream", 0, 600)
    requests = [dataclasses.replace(r, category=UNKNOWN.get(r.category, r.category)) for r in stream.requests]
    return Stream("unknown", "stream", requests, warmup=stream.warmup)


def run(embedder, stream: Stream, name: str, *params: str, pair_protocol: str = "retrieval"):
    method = build_method(name, ["index=exact", "store=memory", *params])
    method.open(embedder.dim, "policies")
    runner = StreamRunner(method, embedder, "precomputed")
    return method, runner, runner.run(stream, pair_protocol=pair_protocol)


def f05(tp: int, fp: int, fn: int) -> Fraction:
    """F0.5 from precision and recall, exactly; 0 without a true positive."""
    if tp == 0:
        return Fraction(0)
    precision, recall = Fraction(tp, tp + fp), Fraction(tp, tp + fn)
    return Fraction(5, 4) * precision * recall / (Fraction(1, 4) * precision + recall)


def best(scores: dict[float, Fraction]) -> float:
    """The threshold of the best score; ties go to the higher threshold."""
    return max(scores, key=lambda t: (scores[t], t))


# -- vCache under the pair protocols -----------------------------------------------------------------------------
def test_vcache_warns_under_both_pair_protocols_where_it_can_hardly_hit(minilm):
    vcache = build_method("vcache", [])
    assert vcache.protocol_warning("stream") is None
    assert build_method("threshold", []).protocol_warning("pair-retrieval") is None
    assert build_method("threshold", []).run_warnings() == []
    pairs = generated("semantic.pairs", 0, 300)
    for protocol in ("retrieval", "pairwise"):
        warning = vcache.protocol_warning(f"pair-{protocol}")
        assert warning and "\n" not in warning and f"pair-{protocol}" in warning and "stream" in warning
        # what the warning is about: on the same pairs a fixed threshold hits a third or more, vCache next to none
        _, _, learned = run(minilm, pairs, "vcache", pair_protocol=protocol)
        _, _, fixed = run(minilm, pairs, "threshold", "threshold=0.8", pair_protocol=protocol)
        assert sum(r.decision.hit for r in learned) <= 0.02 * len(pairs.pairs)
        assert sum(r.decision.hit for r in fixed) >= 0.3 * len(pairs.pairs)


# -- category-aware: a category the policy does not name -----------------------------------------------------------
def test_unknown_default_uses_the_default_entry_and_warns_once_per_category(minilm, unknown_stream):
    method, _, results = run(minilm, unknown_stream, "category-aware")
    warnings = method.run_warnings()
    assert len(warnings) == 2, warnings
    for category in UNKNOWN.values():
        (line,) = [w for w in warnings if f"'{category}'" in w]
        assert "default entry" in line and "threshold 0.85" in line and "\n" not in line
    # exactly as if the categories were named with the default entry's settings
    named = "policy={legal: {threshold: 0.85}, medical: {threshold: 0.85}}"
    explicit, _, same = run(minilm, unknown_stream, "category-aware", named)
    assert explicit.run_warnings() == []
    assert [r.outcome for r in results] == [r.outcome for r in same]
    assert sum(r.decision.hit for r in results if r.request.category == "legal") > 10


def test_unknown_bypass_sends_the_category_past_the_cache(minilm, unknown_stream):
    method, _, results = run(minilm, unknown_stream, "category-aware", "unknown=bypass")
    unknown = [r for r in results if r.request.category in UNKNOWN.values()]
    assert len(unknown) > 100
    assert sum(r.decision.hit for r in unknown) == 0 and {r.decision.note for r in unknown} == {"bypass"}
    assert not {meta.category for meta in method.meta.values()} & set(UNKNOWN.values())
    assert sorted(method.run_warnings()) == [f"category '{c}' has no policy; sent past the cache (unknown=bypass)"
                                             for c in sorted(UNKNOWN.values())]
    # the named categories search their own partitions: untouched by what happened to the others
    _, _, by_default = run(minilm, unknown_stream, "category-aware")
    known = [(r.request.request_id, r.outcome) for r in by_default if r.request.category not in UNKNOWN.values()]
    assert known == [(r.request.request_id, r.outcome) for r in results if r.request.category not in UNKNOWN.values()]


def test_unknown_calibrate_fits_the_best_f05_threshold_on_its_first_observations(minilm, unknown_stream):
    after = 30
    method, runner, results = run(minilm, unknown_stream, "category-aware", "unknown=calibrate",
                                  f"calibrate_after={after}")
    for category in UNKNOWN.values():
        mine = [r for r in results if r.request.category == category]
        # the labels a serving stack has: the LLM's response against the nearest entry's stored one
        labelled = [(r.decision.similarity, runner._entries[r.decision.nearest_key].response == r.request.response)
                    for r in mine if r.decision.note == "calibrating" and r.decision.nearest_key is not None]
        assert len(labelled) == after and method.observations(category) == labelled
        similarities = np.array([s for s, _ in labelled])
        right = np.array([c for _, c in labelled])
        assert 0 < right.sum() < after  # both kinds, so the choice is a real trade-off
        scores = {t: f05(int((right & (similarities >= t)).sum()), int((~right & (similarities >= t)).sum()),
                         int((right & (similarities < t)).sum())) for t in GRID}
        expected = best(scores)
        assert method.threshold_for(category) == expected
        (line,) = [w for w in method.run_warnings() if f"'{category}'" in w]
        assert f"threshold {expected:.2f}" in line and f"first {after} observations" in line
        # nothing was served while calibrating; afterwards the fitted threshold decides
        last = max(i for i, r in enumerate(mine) if r.decision.note == "calibrating")
        assert not any(r.decision.hit for r in mine[:last + 1])
        later = mine[last + 1:]
        assert any(r.decision.hit for r in later)
        for r in later:
            if r.decision.hit:
                assert r.decision.similarity >= expected
            elif r.decision.similarity is not None:
                assert r.decision.similarity < expected and r.decision.note == "below-threshold"
    assert len(method.run_warnings()) == 2


def test_unknown_mode_is_a_declared_parameter():
    with pytest.raises(UsageError):
        build_method("category-aware", ["unknown=guess"])
    with pytest.raises(UsageError):
        build_method("category-aware", ["calibrate_after=0"])


# -- calibrate: a policy file from labelled requests ----------------------------------------------------------------
def simulate_stream(stream: Stream, vectors: dict[str, np.ndarray], threshold: float) -> list[tuple[str, str]]:
    """(category, outcome) of every judged request of a per-category threshold cache: the nearest entry of the
    request's category is served at or above `threshold`; a miss is inserted, and is an FN when the category held
    an entry of the request's class with the response valid now."""
    entries: dict[str, list[tuple[np.ndarray, str, str]]] = {}
    warm = int(len(stream.requests) * stream.warmup)
    judged = []
    for position, request in enumerate(stream.requests):
        vector = vectors[request.prompt]
        held = entries.setdefault(request.category, [])
        outcome = None
        if held:
            similarities = np.stack([v for v, _, _ in held]) @ vector
            nearest = int(np.argmax(similarities))
            if similarities[nearest] >= threshold:
                outcome = "TP" if held[nearest][1] == request.class_id else "FP"
        if outcome is None:
            right = any(c == request.class_id and r == request.response for _, c, r in held)
            outcome = "FN" if right else "TN"
            held.append((vector, request.class_id, request.response))
        if position >= warm:
            judged.append((request.category, outcome))
    return judged


def simulate_pairwise(stream: Stream, vectors: dict[str, np.ndarray], threshold: float) -> list[tuple[str, str]]:
    """Each pair alone: the second item is served the first's response when they are similar enough."""
    judged = []
    for first, second in stream.pairs:
        same_partition = first.category == second.category
        similarity = float(vectors[first.prompt] @ vectors[second.prompt])
        if same_partition and similarity >= threshold:
            outcome = "TP" if first.class_id == second.class_id else "FP"
        else:
            right = same_partition and first.class_id == second.class_id and first.response == second.response
            outcome = "FN" if right else "TN"
        judged.append((second.category, outcome))
    return judged


def expected_policy(judged_by_threshold: dict[float, list[tuple[str, str]]]) -> dict[str, float | None]:
    """Per category: the best exact F0.5 (ties to the higher threshold); None when no threshold can be ranked."""
    categories = {category for judged in judged_by_threshold.values() for category, _ in judged}
    chosen: dict[str, float | None] = {}
    for category in sorted(categories):
        counts = {t: [o for c, o in judged if c == category] for t, judged in judged_by_threshold.items()}
        if not any(o in ("TP", "FN") for outcomes in counts.values() for o in outcomes) or \
                not any("FP" in outcomes for outcomes in counts.values()):
            chosen[category] = None
            continue
        chosen[category] = best({t: f05(o.count("TP"), o.count("FP"), o.count("FN")) for t, o in counts.items()})
    return chosen


def test_calibrate_picks_the_thresholds_an_independent_simulation_picks(minilm, tmp_path):
    result = calibrate("semantic.stream", seed=1, limit=300, loaded_embedder=minilm)
    stream = generated("semantic.stream", 1, 300)
    vectors = {text: minilm._memo[text][0] for text in {r.prompt for r in stream.requests}}
    expected = expected_policy({t: simulate_stream(stream, vectors, t) for t in GRID})
    assert {c: fit.threshold for c, fit in result.categories.items()} == expected
    assert result.mode == "stream" and result.policy == {c: {"threshold": t} for c, t in expected.items() if t}
    assert len(result.notes) == sum(t is None for t in expected.values())

    # the file round-trips through category-aware's own reader: fitted thresholds, other settings built in
    path = write_policy_yaml(result.policy, tmp_path / "policy.yaml", header="semantic.stream, seed 1")
    assert path.read_text().startswith("# semantic.stream, seed 1\n")
    read = parse_policy(str(path))
    for category, entry in result.policy.items():
        assert read[category].threshold == entry["threshold"]
        assert read[category].ttl == DEFAULT_POLICY[category].ttl
    method = build_method("category-aware", [f"policy={path}"])
    assert all(method.threshold_for(c) == e["threshold"] for c, e in result.policy.items())


def test_calibrate_pairwise_matches_the_simulation(minilm):
    result = calibrate("semantic.pairs", seed=1, limit=200, pair_protocol="pairwise", loaded_embedder=minilm)
    stream = generated("semantic.pairs", 1, 200)
    texts = {r.prompt for pair in stream.pairs for r in pair}
    vectors = {text: minilm._memo[text][0] for text in texts}
    expected = expected_policy({t: simulate_pairwise(stream, vectors, t) for t in GRID})
    assert result.mode == "pair-pairwise" and {c: fit.threshold for c, fit in result.categories.items()} == expected
    assert any(t is not None for t in expected.values())


@pytest.mark.parametrize(("args", "message"), [
    ({"task": "semantic.nope"}, "unknown task"),
    ({"task": "semantic"}, "takes one task"),
    ({"task": "multiturn.passkey"}, "KV-cache task"),
    ({"task": "semantic.gptcache-pairs"}, "needs --data"),
    ({"task": "semantic.gptcache-pairs", "data": "/nonexistent/pairs.json"}, "no such file"),
    ({"task": "semantic.stream", "pair_protocol": "pairwise"}, "applies to pair tasks"),
    ({"task": "semantic.pairs", "pair_protocol": "both"}, "--pair-protocol"),
    ({"task": "semantic.stream", "limit": 0}, "--limit"),
    ({"task": "semantic.stream", "thresholds": [1.5]}, "between -1 and 1"),
])
def test_calibrate_refuses_bad_input_in_one_line(args, message):
    with pytest.raises(UsageError) as error:
        calibrate(**args)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_calibrate_command_writes_a_policy_eval_reads_and_warnings_reach_the_user(tmp_path):
    """`cachebench calibrate` end to end: the YAML it writes parses as a category-aware policy with the thresholds
    it printed, `eval` runs with it, and the run's warnings (vCache under a pair protocol) reach stderr."""
    from conftest import run_cli

    policy = tmp_path / "policy.yaml"
    result = run_cli("calibrate", "--task", "semantic.stream", "--limit", "400", "--out", str(policy))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(policy)
    parsed = parse_policy(str(policy))
    printed = {line.split(":")[0]: float(line.split("threshold ")[1].split()[0])
               for line in result.stderr.splitlines() if ": threshold " in line}
    assert printed and {name: parsed[name].threshold for name in printed} == printed
    assert all(GRID[0] <= value <= GRID[-1] for value in printed.values())
    ran = run_cli("eval", "--method", "category-aware", "--task", "semantic.stream", "--limit", "200",
                  "--param", f"policy={policy}", "--llm-cost-ms", "800", "--out", str(tmp_path / "out"), "--quiet")
    assert ran.returncode == 0, ran.stderr
    warned = run_cli("eval", "--method", "vcache", "--task", "semantic.pairs", "--limit", "30", "--llm-cost-ms",
                     "800", "--out", str(tmp_path / "out"), "--quiet")
    assert warned.returncode == 0, warned.stderr
    assert "warning: semantic.pairs:" in warned.stderr and "vcache" in warned.stderr.lower()
    for args, message in ((["--task", "semantic", "--out", str(policy)], "calibrate takes one task"),
                          (["--task", "semantic.stream", "--out", str(tmp_path / "nope" / "p.yaml")],
                           "does not exist")):
        bad = run_cli("calibrate", *args)
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
