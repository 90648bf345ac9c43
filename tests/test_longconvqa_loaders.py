"""longconvqa.longmemeval and longconvqa.locomo on small hand-written files of the real record shapes: fields,
categories, abstention, sizing by dropping sessions without answers, and one-line errors for bad files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import assert_usage_error, run_cli

from cachebench.episodes import BuildRequest, Episode
from cachebench.errors import UsageError
from cachebench.metrics import NOT_MENTIONED
from cachebench.tasks.builders import longconvqa_locomo, longconvqa_longmemeval
from cachebench.taskspec import resolve_tasks

FIXTURES = Path(__file__).parent / "fixtures" / "longconvqa"
LONGMEMEVAL = FIXTURES / "longmemeval.json"
LOCOMO = FIXTURES / "locomo.json"
HEADER = re.compile(r"^Session (\d+) \((.+)\):$", re.MULTILINE)


def words(text: str) -> int:
    return len(text.split())


def request(data: Path | None, context_tokens: int = 0, episodes: int = 100, **args) -> BuildRequest:
    return BuildRequest(episodes=episodes, context_tokens=context_tokens, seed=0, count_tokens=words, args=args,
                        data_path=None if data is None else str(data))  # fmt: skip


def longmemeval(context_tokens: int = 0) -> list[Episode]:
    return longconvqa_longmemeval.build(request(LONGMEMEVAL, context_tokens))


def test_longmemeval_episodes() -> None:
    records = json.loads(LONGMEMEVAL.read_text(encoding="utf-8"))
    episodes = longmemeval()
    assert [e.episode_id for e in episodes] == [f"longmemeval-{r['question_id']}" for r in records]
    assert {e.turns[0].category for e in episodes} == {
        "single-session-user", "single-session-assistant", "single-session-preference", "multi-session",
        "temporal-reasoning", "knowledge-update", "abstention",
    }  # fmt: skip
    spec = resolve_tasks("longconvqa.longmemeval")[0]
    for episode, record in zip(episodes, records, strict=True):
        (turn,) = episode.turns
        context = episode.fields["context"]
        assert turn.fields == {"input": record["question"], "question_date": record["question_date"]}
        assert record["question_date"] in spec.query_template.format(**turn.fields)
        assert [m.group(2) for m in HEADER.finditer(context)] == record["haystack_dates"]
        for line in context.split("\n"):
            assert not line or HEADER.match(line) or line.startswith(("user: ", "assistant: ")), line
        if record["question_id"].endswith("_abs"):
            assert turn.category == "abstention" and turn.references == [NOT_MENTIONED]
            assert turn.meta["abstention"] is True and turn.meta["explanation"] == record["answer"]
        else:
            assert turn.references == [str(record["answer"])] and turn.meta["abstention"] is False
    # an assistant reply written over two lines is one line of the history
    assert "assistant: Try garlic, olive oil and chili flakes with spaghetti. Finish with parsley" in context


def test_longmemeval_drops_non_answer_sessions_oldest_first() -> None:
    full = {e.episode_id: e.fields["context"] for e in longmemeval()}
    knowledge = "longmemeval-f6b3d8e9"  # answer sessions 0 and 3, fillers 1 and 2
    cut = {e.episode_id: e.fields["context"] for e in longmemeval(context_tokens=words(full[knowledge]) - 5)}
    dates = [m.group(2) for m in HEADER.finditer(cut[knowledge])]
    assert dates == ["2023/05/02 (Tue) 09:15", "2023/05/16 (Tue) 12:05", "2023/05/23 (Tue) 20:30"]  # 2nd dropped
    assert "Initech" in cut[knowledge] and "Globex" in cut[knowledge]
    tiny = {e.episode_id: e.fields["context"] for e in longmemeval(context_tokens=1)}
    assert [m.group(1) for m in HEADER.finditer(tiny[knowledge])] == ["1", "2"]  # renumbered; answers kept
    assert "Initech" in tiny[knowledge] and "Globex" in tiny[knowledge]
    temporal = tiny["longmemeval-e5a2c7d8"]  # has_answer marks sessions 1 and 2
    assert [m.group(2) for m in HEADER.finditer(temporal)] == ["2023/05/09 (Tue) 18:40", "2023/05/16 (Tue) 12:05"]


def test_longmemeval_hub_without_network_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(longconvqa_longmemeval, "hub_reachable", lambda: False)
    with pytest.raises(UsageError) as caught:
        longconvqa_longmemeval.build(request(None, file="longmemeval_oracle.json"))
    message = str(caught.value)
    assert "\n" not in message and "xiaowu0162/longmemeval/longmemeval_oracle.json" in message
    assert "--data FILE" in message


def test_locomo_episodes() -> None:
    episodes = longconvqa_locomo.build(request(LOCOMO))
    assert [e.episode_id for e in episodes] == ["locomo-conv-26", "locomo-conv-30"]
    first, second = episodes
    assert [t.category for t in first.turns] == [
        "temporal", "multi-hop", "open-domain", "single-hop", "adversarial", "single-hop",
    ]  # fmt: skip
    by_category = {t.category: t for t in first.turns}
    assert by_category["open-domain"].references == ["counseling"]  # the part before ";"
    assert by_category["multi-hop"].meta["multi_answer"] is True
    assert by_category["multi-hop"].references == ["painting, running"]
    for turn in (by_category["adversarial"], second.turns[2]):
        assert turn.references == [NOT_MENTIONED] and turn.meta["abstention"] is True
    assert all(not t.meta["abstention"] for t in first.turns if t.category != "adversarial")
    context = first.fields["context"]
    assert [m.group(2) for m in HEADER.finditer(context)] == [
        "1:56 pm on 8 May, 2023", "1:14 pm on 25 May, 2023", "7:55 pm on 9 June, 2023",
    ]  # fmt: skip
    shared = "Melanie: Here's the lake sunrise I painted last year. [shares a painting of a sunrise over a lake]"
    assert shared in context
    assert "Caroline: Hey Mel!" in context and second.fields["context"].startswith("Session 1 (4:04 pm on 20 January")


def test_locomo_question_cap_keeps_every_type_and_sizing_keeps_evidence() -> None:
    (capped, _) = longconvqa_locomo.build(request(LOCOMO, questions=4))
    assert [t.category for t in capped.turns] == ["temporal", "multi-hop", "open-domain", "single-hop"]
    (five, _) = longconvqa_locomo.build(request(LOCOMO, questions=5))
    assert {t.category for t in five.turns} == {"temporal", "multi-hop", "open-domain", "single-hop", "adversarial"}
    (tiny, _) = longconvqa_locomo.build(request(LOCOMO, context_tokens=1, questions=1))  # evidence: session 1
    assert [m.group(2) for m in HEADER.finditer(tiny.fields["context"])] == ["1:56 pm on 8 May, 2023"]
    (middle, _) = longconvqa_locomo.build(request(LOCOMO, context_tokens=1, questions=3))  # sessions 1 and 2
    assert len(HEADER.findall(middle.fields["context"])) == 2 and "pride parade" not in middle.fields["context"]


def test_locomo_needs_data() -> None:
    with pytest.raises(UsageError, match=r"needs --data FILE.*snap-research/locomo"):
        longconvqa_locomo.build(request(None))


def _write(tmp_path: Path, records: list) -> Path:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("builder", "fixture", "edit", "message"),
    [
        (longconvqa_longmemeval, LONGMEMEVAL, lambda r: r[1].pop("question"), "record 1: missing 'question'"),
        (longconvqa_longmemeval, LONGMEMEVAL, lambda r: r[0].update(haystack_sessions="text"),
         "record 0: 'haystack_sessions' must be a list, got str"),
        (longconvqa_longmemeval, LONGMEMEVAL, lambda r: r[2].update(haystack_dates=[]), "record 2: haystack_sessions"),
        (longconvqa_longmemeval, LONGMEMEVAL, lambda r: r[0]["haystack_sessions"][1][0].update(role="system"),
         "record 0 session 1 turn 0: role 'system'"),
        (longconvqa_locomo, LOCOMO, lambda r: r[1]["qa"][0].update(category="single-hop"),
         "record 1 qa 0: 'category' must be a number, got str"),
        (longconvqa_locomo, LOCOMO, lambda r: r[0]["qa"][1].pop("answer"), "record 0 qa 1: missing 'answer'"),
        (longconvqa_locomo, LOCOMO, lambda r: r[0]["conversation"].pop("session_2_date_time"),
         "record 0 conversation: missing 'session_2_date_time'"),
    ],
)  # fmt: skip
def test_bad_records_are_one_line_errors(tmp_path: Path, builder, fixture: Path, edit, message: str) -> None:
    records = json.loads(fixture.read_text(encoding="utf-8"))
    edit(records)
    path = _write(tmp_path, records)
    with pytest.raises(UsageError) as caught:
        builder.build(request(path))
    assert "\n" not in str(caught.value) and message in str(caught.value) and str(path) in str(caught.value)


def test_not_json_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('[{"question_id": "x",', encoding="utf-8")
    with pytest.raises(UsageError, match="not JSON") as caught:
        longconvqa_longmemeval.build(request(path))
    assert "\n" not in str(caught.value)


def test_cli_bad_files_exit_2_with_one_line(tmp_path: Path) -> None:
    records = json.loads(LONGMEMEVAL.read_text(encoding="utf-8"))
    records[3]["haystack_sessions"][0] = {"role": "user"}
    path = _write(tmp_path, records)
    result = run_cli("eval", "--method", "full", "--task", "longconvqa.longmemeval", "--data", str(path), "--out",
                     str(tmp_path), env={"HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert_usage_error(result, f"{path} record 3 session 0: must be a list of turns", tmp_path)
    result = run_cli("eval", "--method", "full", "--task", "longconvqa.locomo", "--out", str(tmp_path))
    assert_usage_error(result, "longconvqa.locomo needs --data FILE", tmp_path)
