"""longconvqa.sessions: seeded histories of real chitchat sessions with evidence sessions woven in, questions of
LongMemEval's five types; the longconvqa scorers; and one real run through eval and show."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import run_cli

from cachebench.episodes import BuildRequest, Episode
from cachebench.errors import UsageError
from cachebench.metrics import (
    NOT_MENTIONED,
    get_scorer,
    longconvqa_em,
    longconvqa_f1,
    longconvqa_meta,
    says_unknown,
)
from cachebench.models.loaded import LoadedModel
from cachebench.tasks.builders import longconvqa_sessions as sessions
from cachebench.tasks.builders.longconvqa_templates import evidence_patterns
from cachebench.taskspec import resolve_tasks

HEADER = re.compile(r"^Session (\d+) \((\d{4}-\d{2}-\d{2}), (\w+)\):$")


def words(text: str) -> int:
    return len(text.split())


def build(seed: int = 0, episodes: int = 2, context_tokens: int = 1500, count=words, **args) -> list[Episode]:
    return sessions.build(BuildRequest(episodes=episodes, context_tokens=context_tokens, seed=seed,
                                       count_tokens=count, args=args))  # fmt: skip


@pytest.fixture(scope="module")
def episodes() -> list[Episode]:
    return build(seed=3, episodes=3, context_tokens=3000)


def split_sessions(context: str) -> list[tuple[str, list[str]]]:
    """(header date, utterance lines) per session, checking the layout on the way."""
    out = []
    for block in context.split("\n\n"):
        header, *lines = block.split("\n")
        match = HEADER.match(header)
        assert match and int(match.group(1)) == len(out) + 1, header
        assert lines and all(line.strip() == line and line for line in lines), block
        out.append((match.group(2), lines))
    return out


def test_tasks_resolve_and_groups_keep_the_offline_default() -> None:
    (spec,) = resolve_tasks("longconvqa")
    assert spec.name == "longconvqa.sessions" and spec.mode == "multi-request" and spec.metric == "longconvqa_f1"
    assert spec.context_tokens == 2048 and spec.max_new_tokens == 24 and spec.episodes == 4
    assert [s.name for s in resolve_tasks("longconvqa-hub")] == ["longconvqa.locomo", "longconvqa.longmemeval"]
    assert get_scorer("longconvqa_f1") is longconvqa_f1
    episode = build(episodes=1)[0]
    assert episode.fields["speakers"] in spec.context_template.format(**episode.fields)
    assert '"not mentioned"' in spec.query_template.format(**episode.turns[0].fields)


def test_same_seed_same_episodes_other_seed_differs() -> None:
    first, again, other = build(seed=5), build(seed=5), build(seed=6)
    assert [e.fields for e in first] == [e.fields for e in again]
    assert [[(t.fields, t.references, t.category, t.meta) for t in e.turns] for e in first] == [
        [(t.fields, t.references, t.category, t.meta) for t in e.turns] for e in again
    ]
    assert first[0].fields["context"] != other[0].fields["context"]
    assert first[0].fields["context"] != first[1].fields["context"]  # episodes of one request differ too


def test_history_fills_the_requested_tokens(embedded: LoadedModel) -> None:
    def count(text: str) -> int:
        return len(embedded.tokenizer(text, add_special_tokens=False)["input_ids"])

    for target in (1024, 4096):
        for episode in build(seed=1, context_tokens=target, count=count):
            assert abs(count(episode.fields["context"]) - target) <= 0.1 * target, target
    small, large = (build(seed=1, context_tokens=t, episodes=1)[0] for t in (1000, 4000))
    assert len(split_sessions(large.fields["context"])) > len(split_sessions(small.fields["context"])) + 10


def test_sessions_arg_fixes_the_session_count() -> None:
    (episode,) = build(episodes=1, sessions=30)
    assert len(split_sessions(episode.fields["context"])) == 30
    with pytest.raises(UsageError, match="sessions must be at least"):
        build(episodes=1, sessions=2)
    with pytest.raises(UsageError, match="questions_per_type must be 1-4"):
        build(questions_per_type=5)


def test_every_type_is_asked_per_type_times(episodes: list[Episode]) -> None:
    for episode in episodes:
        categories = [turn.category for turn in episode.turns]
        assert sorted(categories) == sorted(sessions.TYPES * 2)
        assert len({turn.fields["input"] for turn in episode.turns}) == len(episode.turns)
        assert all(turn.references and all(ref.strip() for ref in turn.references) for turn in episode.turns)
    (three,) = build(episodes=1, questions_per_type=3)
    assert sorted(turn.category for turn in three.turns) == sorted(sessions.TYPES * 3)


def test_history_holds_only_headers_real_utterances_and_evidence(episodes: list[Episode]) -> None:
    real = sessions.utterances()
    patterns = evidence_patterns()
    for episode in episodes:
        names = episode.fields["speakers"].split(" and ")
        evidence_lines = chitchat_lines = 0
        for _, lines in split_sessions(episode.fields["context"]):
            for line in lines:
                speaker, text = line.split(": ", 1)
                assert speaker in names
                if text in real:
                    chitchat_lines += 1
                else:
                    assert any(p.match(text) for p in patterns), line
                    evidence_lines += 1
        assert chitchat_lines > 2 * evidence_lines > 0


def test_evidence_sits_early_middle_and_late(episodes: list[Episode]) -> None:
    patterns = evidence_patterns()
    real = sessions.utterances()
    for episode in episodes:
        blocks = split_sessions(episode.fields["context"])
        texts = [[line.split(": ", 1)[1] for line in lines] for _, lines in blocks]
        evidence = [n for n, lines in enumerate(texts)
                    if any(t not in real and any(p.match(t) for p in patterns) for t in lines)]  # fmt: skip
        thirds = {3 * n // len(blocks) for n in evidence}
        assert thirds == {0, 1, 2}, (evidence, len(blocks))
        asked = sorted({s for turn in episode.turns for s in turn.meta["sessions"]})
        assert [n + 1 for n in evidence] == asked  # exactly the sessions the questions need


def test_references_are_stated_in_their_sessions(episodes: list[Episode]) -> None:
    for episode in episodes:
        blocks = split_sessions(episode.fields["context"])
        text_of = {n: "\n".join(lines) for n, (_, lines) in enumerate(blocks, start=1)}
        for turn in episode.turns:
            if turn.category == "single-session":
                (session,) = turn.meta["sessions"]
                assert turn.references[0] in text_of[session]
            elif turn.category == "temporal" and turn.fields["input"].startswith("When"):
                (session,) = turn.meta["sessions"]
                assert turn.references[2] == blocks[session - 1][0]  # the ISO spelling is the header's date
            elif turn.category == "temporal":
                first, second = turn.meta["sessions"]
                assert turn.references[1] in text_of[first] and turn.references[1] not in text_of[second]


def test_knowledge_update_reference_is_the_latest_value(episodes: list[Episode]) -> None:
    seen = 0
    for episode in episodes:
        context = episode.fields["context"]
        for turn in (t for t in episode.turns if t.category == "knowledge-update"):
            old, new = turn.meta["old"], turn.references[0]
            first_old, first_new = (re.search(rf"\b{re.escape(value)}\b", context) for value in (old, new))
            assert old != new and first_old and first_new
            assert first_old.start() < first_new.start()
            early, late = turn.meta["sessions"]
            assert early < late
            seen += 1
    assert seen == 2 * len(episodes)


def test_abstention_asks_about_something_never_mentioned(episodes: list[Episode]) -> None:
    for episode in episodes:
        context = episode.fields["context"].lower()
        for turn in (t for t in episode.turns if t.category == "abstention"):
            assert turn.references == [NOT_MENTIONED] and turn.meta["abstention"] is True
            assert turn.meta["absent"] in turn.fields["input"]
            assert not re.search(rf"\b{re.escape(turn.meta['absent'])}", context)
        assert all(t.meta["abstention"] is False for t in episode.turns if t.category != "abstention")


def test_missing_chitchat_package_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sessions.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UsageError, match=r"pip install 'cachebench\[data\]'") as caught:
        sessions.load_conversations.__wrapped__()
    assert "\n" not in str(caught.value)


def test_says_unknown_regex() -> None:
    for reply in (
        "Not mentioned.",
        "The conversation doesn't say.",
        "There is no information about a hamster.",
        "It is unknown",
        "I don't know",
        "This isn't mentioned anywhere",
        "Tom never mentioned it",
        "It cannot be determined from the chat",
        "Not specified",
        "No information available",
    ):
        assert says_unknown(reply), reply
    for reply in ("Biscuit", "He moved to Denver", "Nothing is mentioned about a cat... just kidding, Mochi"):
        assert not says_unknown(reply), reply


def test_longconvqa_scores() -> None:
    plain = longconvqa_meta("single-session", ["Biscuit"])
    assert plain == {"abstention": False, "multi_answer": False}
    assert longconvqa_f1("Biscuit", ["Biscuit"], plain) == 1.0
    assert longconvqa_f1("The dog is Biscuit", ["Biscuit"], plain) == pytest.approx(0.5)  # p 1/3, r 1
    assert longconvqa_f1("Denver", ["Austin and Denver"], plain) == pytest.approx(0.5)  # p 1, r 1/3
    assert longconvqa_f1("Pepper", ["Biscuit", "Pepper"], plain) == 1.0
    assert longconvqa_f1("not mentioned", ["Biscuit"], plain) == 0.0
    abstain = longconvqa_meta("abstention", [NOT_MENTIONED])
    assert abstain["abstention"] is True
    assert longconvqa_f1("That was never mentioned.", [NOT_MENTIONED], abstain) == 1.0
    assert longconvqa_f1("Mochi", [NOT_MENTIONED], abstain) == 0.0
    assert longconvqa_em("Not mentioned in the conversation", [NOT_MENTIONED], abstain) == 1.0
    # LoCoMo multi-hop: split both on commas, mean over reference parts of the best part match
    multi = longconvqa_meta("multi-hop", ["painting, running"])
    assert multi["multi_answer"] is True
    assert longconvqa_f1("running, painting", ["painting, running"], multi) == 1.0
    assert longconvqa_f1("painting", ["painting, running"], multi) == pytest.approx(0.5)
    assert longconvqa_f1("painting and swimming", ["painting, running"], multi) == pytest.approx(0.25)  # (0.5 + 0) / 2
    assert longconvqa_em("Painting", ["painting, running"], multi) == pytest.approx(0.5)
    assert longconvqa_em("The Biscuit.", ["Biscuit"], plain) == 1.0  # articles and punctuation normalised
    assert longconvqa_em("Biscuit the dog", ["Biscuit"], plain) == 0.0


def test_eval_and_show_break_the_score_down_by_type(tmp_path: Path) -> None:
    result = run_cli("eval", "--method", "full", "--task", "longconvqa", "--context-tokens", "512", "--limit", "1",
                     "--out", str(tmp_path), "--quiet")  # fmt: skip
    assert result.returncode == 0, result.stderr
    (path,) = tmp_path.glob("*.parquet")
    rows = pq.read_table(path).to_pylist()
    assert len(rows) == 10 and {r["task"] for r in rows} == {"longconvqa.sessions"}
    assert sorted(r["category"] for r in rows) == sorted(sessions.TYPES * 2)
    assert {r["metric"] for r in rows} == {"longconvqa_f1"} and all(r["error"] is None for r in rows)
    assert all(0.0 <= r["score"] <= 1.0 and r["prediction"] for r in rows)
    for row in rows:  # the row's score is the scorer's on the row's own prediction
        meta = longconvqa_meta(row["category"], row["references"])
        assert row["score"] == pytest.approx(longconvqa_f1(row["prediction"], row["references"], meta))
    shown = run_cli("show", str(tmp_path))
    assert shown.returncode == 0, shown.stderr
    assert "longconvqa.sessions by category" in shown.stdout and "EM" in shown.stdout
    table = shown.stdout.split("longconvqa.sessions by category", 1)[1]
    for category in sessions.TYPES:
        line = next(line for line in table.splitlines() if f" {category} " in line)
        expected = sum(r["score"] for r in rows if r["category"] == category) / 2
        assert f"{expected:.3f}" in line and re.search(r"\b2\b", line), line
