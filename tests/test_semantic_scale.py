"""The semantic track at scale: --requests sizes the generated tasks, whose classes and users grow with them
while the default-size stream stays exactly what reference results were measured on; loaders read whole files
(GLUE's and Kaggle's QQP shapes) unless told to keep fewer.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from itertools import pairwise
from pathlib import Path

import pytest

from cachebench.errors import UsageError
from cachebench.runs import EvalRequest
from cachebench.semantic.evaluate import build_stream
from cachebench.semantic.stream import Request, Stream, StreamRequest
from cachebench.tasks.builders import (
    semantic_generator,
    semantic_generator_pairs,
    semantic_paws,
    semantic_qqp,
)
from cachebench.tasks.builders.semantic_knobs import MAX_REQUESTS
from cachebench.tasks.builders.semantic_names import KINDS, capacity, name
from cachebench.tasks.builders.semantic_pool import Pool
from cachebench.tasks.builders.semantic_tail import TAIL_MARK
from cachebench.taskspec import all_tasks, builder_module

# sha256 of the streams as generated before classes and users could grow (see _digest): the default stream and
# pair set are what reference results and calibrated policies were measured on, so they must never move
PINNED = {
    ("stream", 0, 2000): "4defcf6f3bdc82eeac3766c542aa88a3b4445065423c9b681668481f85717476",
    ("stream", 1, 2000): "af4d1d65cc06a3c141706c4121d65feee9e2af109e94638c97c540b3cedf1dc2",
    ("stream", 0, 500): "7e6fce705069e48bf5ef7d2039ea08e886661206c21dc138c029ba0b6236933f",
    ("stream", 0, 1000): "b17dcfa19955f18595611a46b8379cd90f4c6c5229b0865ff9314e193df946ba",
    ("pairs", 0, 1000): "d985740b693dde125e48946c5ec46de875bfa836df6b7cf860aebb3ce1349b07",
    ("pairs", 1, 1000): "e37033dd20b8b7f148240e5fd4416f4b1a54364b468093dd81726693300acd74",
}


def _digest(requests: list[Request]) -> str:
    digest = hashlib.sha256()
    for r in requests:
        fields = [r.request_id, r.prompt, r.class_id, r.category, r.timestamp, r.user, r.parent, r.response]
        digest.update(json.dumps(fields).encode() + b"\n")
    return digest.hexdigest()


def _pair_requests(workload: Stream) -> list[Request]:
    return [side for pair in workload.pairs for side in pair] + list(workload.ancestors.values())


def stream(seed: int = 0, requests: int | None = None, limit: int | None = None, **overrides) -> Stream:
    args = {**all_tasks()["semantic.stream"].builder_args, **overrides}
    return semantic_generator.build_stream(StreamRequest(seed=seed, args=args, limit=limit, requests=requests))


def pairs(seed: int = 0, requests: int | None = None, limit: int | None = None) -> Stream:
    args = all_tasks()["semantic.pairs"].builder_args
    return semantic_generator_pairs.build_stream(StreamRequest(seed=seed, args=args, limit=limit, requests=requests))


def repeat_shares(requests: list[Request]) -> dict[str, float]:
    seen: set[str] = set()
    repeats, totals = Counter(), Counter()
    for r in requests:
        totals[r.category] += 1
        repeats[r.category] += r.class_id in seen
        seen.add(r.class_id)
    return {category: repeats[category] / totals[category] for category in totals}


@pytest.fixture(scope="module")
def large() -> Stream:
    return stream(requests=20_000)


def test_the_default_stream_and_pairs_are_what_they_always_were():
    assert _digest(stream(0).requests) == PINNED[("stream", 0, 2000)]
    assert _digest(stream(1).requests) == PINNED[("stream", 1, 2000)]
    assert _digest(stream(0, requests=2000).requests) == PINNED[("stream", 0, 2000)]
    for size in (500, 1000):  # below the default size nothing grows either
        assert _digest(stream(0, requests=size).requests) == PINNED[("stream", 0, size)]
    assert _digest(_pair_requests(pairs(0))) == PINNED[("pairs", 0, 1000)]
    assert _digest(_pair_requests(pairs(1, requests=1000))) == PINNED[("pairs", 1, 1000)]


def test_requests_overrides_the_knob_and_limit_keeps_a_prefix(large):
    assert len(large.requests) == 20_000
    knob = {**all_tasks()["semantic.stream"].builder_args, "requests": 5000}
    assert len(semantic_generator.build_stream(StreamRequest(seed=0, args=knob, requests=300)).requests) == 300
    head = stream(requests=20_000, limit=150).requests
    assert [r.request_id for r in head] == [r.request_id for r in large.requests[:150]]
    assert _digest(head) == _digest(large.requests[:150])
    assert len(pairs(requests=1500).pairs) == 1500 and len(pairs(requests=1500, limit=40).pairs) == 40


@pytest.mark.parametrize("value", [0, -5, MAX_REQUESTS + 1, True, 2.5])
def test_requests_out_of_range_is_one_line(value):
    for build in (stream, pairs):
        with pytest.raises(UsageError) as caught:
            build(requests=value)
        message = str(caught.value)
        assert "\n" not in message and "--requests must be between 1 and 10,000,000" in message


def test_the_requests_knob_has_the_same_bound():
    args = {**all_tasks()["semantic.stream"].builder_args, "requests": MAX_REQUESTS + 1}
    with pytest.raises(UsageError, match="requests must be <= 10000000"):
        semantic_generator.build_stream(StreamRequest(seed=0, args=args))


def test_only_generated_tasks_take_requests(tmp_path):
    """Generated builders say so (GENERATED); eval refuses --requests for any other before it reads data."""
    for task in ("semantic.stream", "semantic.pairs"):
        assert builder_module(all_tasks()[task]).GENERATED is True
    data = tmp_path / "absent.jsonl"  # never read: the refusal comes first
    for task in ("semantic.qqp", "semantic.paws", "semantic.gptcache-pairs", "semantic.contextual",
                 "semantic.sembenchmark"):
        assert not getattr(builder_module(all_tasks()[task]), "GENERATED", False)
        request = EvalRequest(method="threshold", task=task, requests=50_000, data=str(data))
        with pytest.raises(UsageError) as caught:
            build_stream(all_tasks()[task], request)
        message = str(caught.value)
        assert "\n" not in message and message.startswith("--requests applies to generated tasks") and task in message
    request = EvalRequest(method="threshold", task="semantic.stream", requests=3000, limit=2500)
    assert len(build_stream(all_tasks()["semantic.stream"], request).requests) == 2500


def test_classes_and_users_grow_with_the_stream_and_repetition_stays(large):
    small = stream().requests
    assert len({r.user for r in small}) == 8
    assert len({r.user for r in large.requests}) == 20_000 // 250
    assert len({r.user for r in stream(requests=20_000, users=8).requests}) == 8  # a given knob still wins
    small_classes = Counter(r.category for r in {r.class_id: r for r in small}.values())
    large_classes = Counter(r.category for r in {r.class_id: r for r in large.requests}.values())
    for category, count in small_classes.items():
        assert large_classes[category] > 5 * count, (category, count, large_classes[category])
    before, after = repeat_shares(small), repeat_shares(large.requests)
    for category in before:  # conversation stays near-uniform and sparse in repeats, the others near theirs
        assert abs(after[category] - before[category]) < 0.12, (category, before, after)
    assert after["code"] > after["conversation"] + 0.25
    tail = [r for r in large.requests if TAIL_MARK in r.class_id]
    assert 0.2 < len(tail) / len(large.requests) < 0.8
    assert {r.category for r in tail} == {"code", "conversation", "factual", "time-sensitive"}


def test_a_capped_category_grows_no_tail():
    requests = stream(requests=10_000, classes={"code": 20}).requests
    code = {r.class_id for r in requests if r.category == "code" and r.parent is None}
    assert len(code) == 20 and not any(TAIL_MARK in r.class_id for r in requests if r.category == "code")
    assert any(TAIL_MARK in r.class_id for r in requests if r.category == "factual")


def test_tail_classes_are_seeded_and_behave_as_written_ones(large):
    again = stream(requests=20_000)
    assert _digest(again.requests[:3000]) == _digest(large.requests[:3000])
    assert _digest(stream(seed=1, requests=20_000).requests[:3000]) != _digest(large.requests[:3000])
    by_class: dict[str, set[str]] = {}
    for r in large.requests:
        by_class.setdefault(r.class_id, set()).add(r.prompt)
    tail_classes = [c for c in by_class if TAIL_MARK in c and ">" not in c]
    assert sum(len(by_class[c]) > 1 for c in tail_classes) > len(tail_classes) / 4  # paraphrased, as written ones
    live = [r for r in large.requests if r.category == "time-sensitive" and TAIL_MARK in r.class_id]
    assert len({r.response for r in live if r.class_id == live[0].class_id}) >= 1
    assert all("[period " in r.response for r in live)  # tail live values go stale like written ones
    follow = [r for r in large.requests if r.parent and TAIL_MARK in r.class_id and r.class_id.startswith("code:")
              and ">" not in r.class_id]
    assert follow, "a 'what about in Go?' after a tail code question resolves to that tail task in Go"
    by_id = {r.request_id: r for r in large.requests}
    for r in follow:
        parent = by_id[r.parent]
        assert parent.class_id.rsplit(":", 1)[0] == r.class_id.rsplit(":", 1)[0] != ""


def test_tail_hard_negatives_are_slot_variants():
    pool = Pool(0, {}, {"time-sensitive": 300.0}, scale=30.0)
    for category in ("code", "conversation", "factual", "time-sensitive"):
        ranked = pool.intents[category]
        intent = ranked[len(ranked) - 5]
        negatives = pool.hard_negatives(intent)
        assert negatives and all(other.class_id != intent.class_id for other in negatives)
        assert all(TAIL_MARK in other.class_id and other.category == category for other in negatives)
    workload = pairs(requests=5000)
    negatives = [(a, b) for a, b in workload.pairs if a.class_id != b.class_id and TAIL_MARK in a.class_id
                 and not a.parent]
    assert negatives
    for a, b in negatives[:50]:  # one slot apart: the same relation (frame, task) or the same named entity
        same_relation = a.class_id.split(TAIL_MARK)[0] == b.class_id.split(TAIL_MARK)[0]
        assert same_relation or _names(a.prompt) & _names(b.prompt), (a.prompt, b.prompt)


def _names(text: str) -> set[str]:
    """Capitalised words after the first: the made-up names a tail prompt holds."""
    return {word.strip("?.,!") for word in text.split()[1:] if word[:1].isupper()}


def test_names_are_distinct_pronounceable_and_seeded():
    for kind in KINDS:
        made = [name(kind, index, 0) for index in range(5000)]
        assert len(set(made)) == 5000 and capacity(kind) > 900_000
        assert all(part[0].isupper() for text in made for part in text.split()[:1])
        assert made[:20] == [name(kind, index, 0) for index in range(20)]
        assert made[:20] != [name(kind, index, 1) for index in range(20)]
    with pytest.raises(ValueError):
        name("town", capacity("town"), 0)


def test_a_dense_stream_keeps_increasing_timestamps():
    requests = stream(requests=5000, duration=20).requests  # mean gap 4 ms: microsecond clock
    times = [r.timestamp for r in requests]
    assert all(b > a for a, b in pairwise(times))
    assert times[-1] < 40


# --- loaders read whole files ----------------------------------------------------------------------------------------

def _qqp_rows(count: int) -> list[dict]:
    return [{"question1": f"How do I learn topic {i}?", "question2": f"What is the way to learn topic {i}?",
             "label": i % 2, "idx": i} for i in range(count)]


def _load(module, path: Path, limit: int | None = None, **args) -> Stream:
    return module.build_stream(StreamRequest(seed=0, args=args or all_tasks()[_task(module)].builder_args,
                                             limit=limit, data_path=str(path)))


def _task(module) -> str:
    return {semantic_qqp: "semantic.qqp", semantic_paws: "semantic.paws"}[module]


def test_qqp_and_paws_read_the_whole_file_by_default(tmp_path):
    path = tmp_path / "qqp.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in _qqp_rows(2500)))
    assert all_tasks()["semantic.qqp"].builder_args["pairs"] == 0
    assert len(_load(semantic_qqp, path).pairs) == 2500
    assert len(_load(semantic_qqp, path, limit=100).pairs) == 100
    assert len(_load(semantic_qqp, path, pairs=300).pairs) == 300
    paws = tmp_path / "paws.jsonl"
    paws.write_text("\n".join(json.dumps({"id": i, "sentence1": f"Flights from A{i} to B{i}",
                                          "sentence2": f"Flights from B{i} to A{i}", "label": 0})
                              for i in range(2300)))
    assert all_tasks()["semantic.paws"].builder_args["pairs"] == 0
    assert len(_load(semantic_paws, paws).pairs) == 2300
    assert len(_load(semantic_paws, paws, limit=7).pairs) == 7


def test_qqp_reads_kaggles_shape(tmp_path):
    path = tmp_path / "train.csv"
    rows = [
        {"id": 0, "qid1": 1, "qid2": 2, "question1": "How do I learn Go?", "question2": "Best way to learn Go?",
         "is_duplicate": 1},
        {"id": 1, "qid1": 3, "qid2": 4, "question1": "Why is the sky blue?", "question2": "Why is grass green?",
         "is_duplicate": 0},
        {"id": 2, "qid1": 5, "qid2": 6, "question1": "What is love?", "question2": "", "is_duplicate": 0},
        {"id": 3, "qid1": 1, "qid2": 7, "question1": "How do I learn Go?", "question2": "How to learn golang?",
         "is_duplicate": 1},
    ]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    workload = _load(semantic_qqp, path)
    assert [int(a.class_id == b.class_id) for a, b in workload.pairs] == [1, 0, 1]  # the blank pair is left out
    assert [a.request_id for a, _ in workload.pairs] == ["qqp-1a", "qqp-2a", "qqp-4a"]  # numbered as in the file
    by_id = {r.request_id: r for pair in workload.pairs for r in pair}
    assert by_id["qqp-1a"].class_id == by_id["qqp-4b"].class_id  # a recurring question joins classes
    unlabelled = tmp_path / "test.jsonl"
    unlabelled.write_text(json.dumps({"test_id": 0, "question1": "a?", "question2": "b?"}))
    with pytest.raises(UsageError) as caught:
        _load(semantic_qqp, unlabelled)
    assert "record 1: missing 'label' (or 'is_duplicate')" in str(caught.value)
    glue = tmp_path / "glue.jsonl"
    glue.write_text(json.dumps({"question1": " ", "question2": "b?", "label": 0, "idx": 0}))
    with pytest.raises(UsageError, match="record 1: 'question1' must be non-empty text"):
        _load(semantic_qqp, glue)  # GLUE's shape has no blank questions: one is a broken record
