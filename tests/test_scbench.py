"""The real-SCBench tasks: YAMLs resolve, the builder maps hub-shaped records (local fixtures) onto episodes the
templates and scorers accept, and a hub load without network fails as a one-line UsageError. No model needed."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from cachebench.episodes import BuildRequest, Episode, Turn
from cachebench.errors import UsageError
from cachebench.metrics import get_scorer
from cachebench.tasks.builders import scbench
from cachebench.taskspec import TaskSpec, resolve_tasks

FIXTURES = Path(__file__).parent / "fixtures" / "scbench"
CONFIGS = scbench.CONFIGS
FIXTURE_CONFIGS = sorted(path.stem for path in FIXTURES.glob("*.jsonl"))
RECORD_KEYS = {"id", "context", "multi_turns", "lang", "repo"}
TURN_KEYS = {"input", "answer", "options", "task", "name"}


def _spec(config: str) -> TaskSpec:
    (spec,) = resolve_tasks(f"multiturn.{config}")
    return spec


def _build(config: str, data_path: str | Path | None = None, episodes: int = 100) -> list[Episode]:
    request = BuildRequest(
        episodes=episodes,
        context_tokens=0,
        seed=0,
        count_tokens=lambda text: len(text.split()),
        args={"config": config},
        data_path=None if data_path is None else str(data_path),
    )
    return scbench.build(request)


def _fixture(config: str) -> list[Episode]:
    return _build(config, FIXTURES / f"{config}.jsonl")


def _records(config: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / f"{config}.jsonl").read_text(encoding="utf-8").splitlines()]


def test_every_config_has_a_task_in_the_scbench_group() -> None:
    specs = resolve_tasks("scbench")
    assert len(specs) == 12
    assert {spec.subtask for spec in specs} == set(CONFIGS)
    for spec in specs:
        assert spec.family == "multiturn"
        assert spec.builder == "scbench"
        assert spec.builder_args == {"config": spec.subtask}
        assert spec.mode == "multi-turn"
        assert spec.source == f"hub: microsoft/SCBench {spec.subtask} (or --data FILE of that shape)"
        get_scorer(spec.metric)
        for metric in spec.metric_by_category.values():
            get_scorer(metric)


@pytest.mark.parametrize(
    ("config", "metric", "max_new_tokens"),
    [
        ("scbench_kv", "substring", 150),
        ("scbench_prefix_suffix", "substring", 150),
        ("scbench_vt", "string_match_all", 30),
        ("scbench_repoqa", "repoqa", 1024),
        ("scbench_qa_eng", "substring_any_ci", 40),
        ("scbench_qa_chn", "qa_f1_zh", 40),
        ("scbench_choice_eng", "choice", 40),
        ("scbench_mf", "math_find", 5),
        ("scbench_many_shot", "substring_any_ci", 10),
        ("scbench_summary", "rouge_lsum", 200),
    ],
)
def test_single_task_metric_and_budget_follow_scbench(config: str, metric: str, max_new_tokens: int) -> None:
    spec = _spec(config)
    assert (spec.metric, spec.max_new_tokens, spec.metric_by_category) == (metric, max_new_tokens, {})


def test_mixed_tasks_score_and_budget_per_category() -> None:
    needles = _spec("scbench_summary_with_needles")
    assert needles.metric_for("scbench_summary") == "rouge_lsum"
    assert needles.metric_for("scbench_passkey") == "first_int"
    assert (needles.max_new_tokens_for("scbench_summary"), needles.max_new_tokens_for("scbench_passkey")) == (800, 15)
    assert needles.max_new_tokens == 800
    mixed = _spec("scbench_repoqa_and_kv")
    assert mixed.metric_for("scbench_repoqa") == "repoqa"
    assert mixed.metric_for("scbench_kv") == "substring"
    assert (mixed.max_new_tokens_for("scbench_repoqa"), mixed.max_new_tokens_for("scbench_kv")) == (1024, 80)
    assert mixed.max_new_tokens == 1024


def test_templates_keep_scbench_wording() -> None:
    assert _spec("scbench_kv").context_template.startswith("Extract the value corresponding to the specified key")
    assert _spec("scbench_qa_eng").query_template == "Question: {input}\nAnswer:"
    assert _spec("scbench_qa_chn").query_template == "问题：{input}\n答案："
    assert _spec("scbench_choice_eng").query_template.endswith("\n\nThe the correct answer is")
    assert _spec("scbench_mf").query_template == "{prefix}\n\n{input}"
    assert _spec("scbench_repoqa").context_template.endswith("in a code block wrapped by ```:\n\n{context}")
    assert _spec("scbench_summary").context_template == "{context}"


def test_fixtures_cover_the_required_configs_in_the_hub_shape() -> None:
    required = {"scbench_kv", "scbench_choice_eng", "scbench_mf", "scbench_repoqa_and_kv",
                "scbench_summary_with_needles", "scbench_vt"}
    assert required <= set(FIXTURE_CONFIGS)
    for config in FIXTURE_CONFIGS:
        records = _records(config)
        assert len(records) == 2
        for record in records:
            assert {"id", "context", "multi_turns"} <= set(record) <= RECORD_KEYS
            assert 2 <= len(record["multi_turns"]) <= 3
            for turn in record["multi_turns"]:
                assert {"input", "answer"} <= set(turn) <= TURN_KEYS


@pytest.mark.parametrize("config", FIXTURE_CONFIGS)
def test_fixture_builds_episodes_the_templates_format(config: str) -> None:
    spec = _spec(config)
    records = _records(config)
    episodes = _fixture(config)
    assert [ep.episode_id for ep in episodes] == [f"{config}-{record['id']}" for record in records]
    for episode, record in zip(episodes, records, strict=True):
        assert episode.fields == {"context": record["context"]}
        assert record["context"] in spec.context_template.format(**episode.fields)
        assert len(episode.turns) == len(record["multi_turns"])
        for turn, raw in zip(episode.turns, record["multi_turns"], strict=True):
            assert turn.fields["input"] == raw["input"]
            assert raw["input"] in spec.query_template.format(**turn.fields)
            assert turn.references and all(isinstance(ref, str) for ref in turn.references)
            expected_category = raw["task"] if config in scbench.MIXED else config
            assert turn.category == expected_category


def test_limit_takes_the_first_records() -> None:
    episodes = _build("scbench_kv", FIXTURES / "scbench_kv.jsonl", episodes=1)
    assert [ep.episode_id for ep in episodes] == ["scbench_kv-0"]


def test_choice_turns_carry_options_and_the_correct_letter() -> None:
    for episode, record in zip(_fixture("scbench_choice_eng"), _records("scbench_choice_eng"), strict=True):
        for turn, raw in zip(episode.turns, record["multi_turns"], strict=True):
            options = raw["options"]
            letter = "ABCD"[options.index(raw["answer"])]
            assert turn.references == [raw["answer"], letter]
            assert [turn.fields[f"option_{x}"] for x in "abcd"] == options
            query = _spec("scbench_choice_eng").query_template.format(**turn.fields)
            assert f"\n{letter}. {raw['answer']}\n" in query


def test_math_find_prefix_comes_from_the_input() -> None:
    episode = _fixture("scbench_mf")[0]
    assert episode.turns[0].fields["prefix"] == "What is the largest number of the list?"
    assert episode.turns[1].fields["prefix"] == "What is the smallest number of the list?"
    record = _records("scbench_mf")[0]
    assert episode.turns[0].references == [str(record["multi_turns"][0]["answer"])]  # int answer -> string


def test_repoqa_turns_carry_every_needle_of_their_repository() -> None:
    for config in ("scbench_repoqa", "scbench_repoqa_and_kv"):
        for episode, record in zip(_fixture(config), _records(config), strict=True):
            asked = {t["name"]: t["answer"] for t in record["multi_turns"] if t.get("task", config) != "scbench_kv"}
            for turn, raw in zip(episode.turns, record["multi_turns"], strict=True):
                if turn.category == "scbench_kv":
                    assert turn.meta == {}
                    continue
                assert turn.meta["name"] == raw["name"]
                assert turn.meta["needles"] == asked


def test_repoqa_needles_are_grouped_by_repository(tmp_path: Path) -> None:
    first, second = _records("scbench_repoqa")
    second = {**second, "id": 7, "repo": first["repo"]}  # two records of one repository share their needles
    path = tmp_path / "same_repo.jsonl"
    path.write_text("\n".join(json.dumps(record) for record in (first, second)) + "\n", encoding="utf-8")
    episodes = _build("scbench_repoqa", path)
    names = {t["name"] for record in (first, second) for t in record["multi_turns"]}
    assert set(episodes[0].turns[0].meta["needles"]) == names
    assert set(episodes[1].turns[0].meta["needles"]) == names


def _right_answer(metric: str, turn: Turn) -> str:
    if metric == "repoqa":
        return f"```python\n{turn.references[0]}\n```"
    if metric == "string_match_all":
        return ", ".join(turn.references)
    if metric == "choice":
        return turn.references[-1]
    if metric == "substring_any_ci":
        return f"It is {turn.references[0].lower()}."
    return turn.references[0]


@pytest.mark.parametrize("config", FIXTURE_CONFIGS)
def test_scorers_accept_right_and_reject_wrong_answers(config: str) -> None:
    spec = _spec(config)
    for episode in _fixture(config):
        for turn in episode.turns:
            metric = spec.metric_for(turn.category)
            scorer = get_scorer(metric)
            assert scorer(_right_answer(metric, turn), turn.references, turn.meta) == pytest.approx(1.0), metric
            assert scorer("zzz qqq", turn.references, turn.meta) == 0.0, metric


def test_choice_rejects_a_wrong_letter() -> None:
    turn = _fixture("scbench_choice_eng")[0].turns[0]
    wrong = next(letter for letter in "ABCD" if letter not in turn.references)
    assert get_scorer("choice")(wrong, turn.references, turn.meta) == 0.0
    assert get_scorer("choice")(turn.references[0], turn.references, turn.meta) == 1.0


def test_repoqa_rejects_another_function_of_the_repository() -> None:
    first, second = _fixture("scbench_repoqa")[0].turns
    reply = f"```python\n{second.references[0]}\n```"
    assert get_scorer("repoqa")(reply, first.references, first.meta) == 0.0


def test_references_are_normalised_to_strings() -> None:
    assert scbench.as_references("abc") == ["abc"]
    assert scbench.as_references(42) == ["42"]
    assert scbench.as_references(["X", 3]) == ["X", "3"]
    assert scbench.as_references(None) == []


def _go_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the hub call fail at once: the env var for a fresh import, the flags for modules already imported."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)


def test_hub_load_without_network_is_a_one_line_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    _go_offline(monkeypatch)
    start = time.monotonic()
    with pytest.raises(UsageError) as caught:
        _build("scbench_kv", None)
    assert time.monotonic() - start < 30
    message = str(caught.value)
    assert "\n" not in message
    assert "microsoft/SCBench scbench_kv" in message
    assert "--data FILE" in message


def test_missing_datasets_package_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(UsageError, match="datasets package"):
        _build("scbench_kv", FIXTURES / "scbench_kv.jsonl")


def test_bad_input_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"args\.config"):
        _build("scbench_nope", FIXTURES / "scbench_kv.jsonl")
    with pytest.raises(UsageError, match="could not load --data"):
        _build("scbench_kv", tmp_path / "absent.jsonl")
    no_phrase = tmp_path / "mf.jsonl"
    no_phrase.write_text(json.dumps({"id": 0, "context": "[1, 2]", "multi_turns": [{"input": "Max?", "answer": 2}]}))
    with pytest.raises(UsageError, match=r"no 'The \.\.\. is' phrase"):
        _build("scbench_mf", no_phrase)
    no_task = tmp_path / "mixed.jsonl"
    no_task.write_text(json.dumps({"id": 0, "context": "text", "multi_turns": [{"input": "Q", "answer": "A"}]}))
    with pytest.raises(UsageError, match="missing 'task'"):
        _build("scbench_summary_with_needles", no_task)
