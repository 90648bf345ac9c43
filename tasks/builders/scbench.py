"""The real SCBench data (microsoft/SCBench on the HF hub, Li et al. 2024), any of its 12 configs.

SCBench asks several questions about one long shared context, which is exactly what a KV-cache method has to
survive across turns or requests. This builder only maps the hub records onto episodes; prompts, scorers and
token limits live in the task YAMLs and follow SCBench's own evaluation code (microsoft/MInference, scbench/).

A hub record is `{id, context, multi_turns: [{input, answer, options?, task?, name?}], lang?, repo?}`. Offline,
`--data FILE` takes a local JSONL of exactly that shape.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from cachebench.episodes import BuildRequest, Episode, Turn
from cachebench.errors import UsageError
from cachebench.tasks.builders.hub_records import load_records

HUB_DATASET = "microsoft/SCBench"
CONFIGS = (
    "scbench_kv", "scbench_prefix_suffix", "scbench_vt", "scbench_repoqa", "scbench_qa_eng", "scbench_qa_chn",
    "scbench_choice_eng", "scbench_mf", "scbench_many_shot", "scbench_summary", "scbench_summary_with_needles",
    "scbench_repoqa_and_kv",
)  # fmt: skip
MIXED = ("scbench_summary_with_needles", "scbench_repoqa_and_kv")  # turns carry their own sub-task
REPOQA = "scbench_repoqa"
LETTERS = "ABCD"
_MF_TARGET = re.compile(r"The .+ is")  # SCBench turns "The largest number of the list is" into its question


def build(request: BuildRequest) -> list[Episode]:
    """Load the config's records (hub or --data file) and map the first `request.episodes` onto episodes."""
    config = str(request.args.get("config", ""))
    if config not in CONFIGS:
        raise UsageError(f"scbench builder: args.config {config!r} is not one of {', '.join(CONFIGS)}")
    records = _load(config, request.data_path, request.episodes)
    needles = _repoqa_needles(config, records)
    return [_episode(config, record, index, needles) for index, record in enumerate(records)]


def _load(config: str, data_path: str | None, limit: int) -> list[dict[str, Any]]:
    """The first `limit` records, read with HF datasets so a local file parses exactly as the hub's does."""
    return load_records(HUB_DATASET, "test", data_path, limit, "the hub's", config)


def as_references(answer: Any) -> list[str]:
    """SCBench answers are a string, a number or a list of them; scorers take a list of strings."""
    if answer is None:
        return []
    if isinstance(answer, list | tuple):
        return [str(item) for item in answer if item is not None]
    return [str(answer)]


def _require(mapping: Mapping[str, Any], key: str, where: str) -> Any:
    value = mapping.get(key)
    if value is None:
        raise UsageError(f"{where}: missing {key!r} (expected SCBench's record shape)")
    return value


def _record_id(record: Mapping[str, Any], index: int) -> Any:
    return record["id"] if record.get("id") is not None else index


def _category(config: str, turn: Mapping[str, Any], where: str) -> str:
    return str(_require(turn, "task", where)) if config in MIXED else config


def _repoqa_needles(config: str, records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, str]]:
    """Every asked-for function by repository, as SCBench scores RepoQA: a reply counts only if it is closer to
    its own function than to any other function asked about in that repository."""
    needles: dict[str, dict[str, str]] = {}
    if config not in (REPOQA, "scbench_repoqa_and_kv"):
        return needles
    for index, record in enumerate(records):
        group = needles.setdefault(_repo_key(record, index), {})
        for number, turn in enumerate(record.get("multi_turns") or []):
            where = f"{config} record {_record_id(record, index)} turn {number}"
            if _category(config, turn, where) == REPOQA:
                references = as_references(_require(turn, "answer", where))
                group[str(_require(turn, "name", where))] = references[0] if references else ""
    return needles


def _repo_key(record: Mapping[str, Any], index: int) -> str:
    repo = record.get("repo")
    return f"repo:{repo}" if repo else f"record:{_record_id(record, index)}"


def _episode(config: str, record: Mapping[str, Any], index: int, needles: Mapping[str, dict[str, str]]) -> Episode:
    record_id = _record_id(record, index)
    where = f"{config} record {record_id}"
    context = record.get("context") if record.get("context") is not None else record.get("input")
    if context is None:
        raise UsageError(f"{where}: missing 'context' (expected SCBench's record shape)")
    turns = [
        _turn(config, turn, f"{where} turn {number}", needles.get(_repo_key(record, index), {}))
        for number, turn in enumerate(_require(record, "multi_turns", where))
    ]
    return Episode(f"{config}-{record_id}", {"context": str(context)}, turns)


def _turn(config: str, turn: Mapping[str, Any], where: str, needles: dict[str, str]) -> Turn:
    text = str(_require(turn, "input", where))
    references = as_references(_require(turn, "answer", where))
    category = _category(config, turn, where)
    fields = {"input": text}
    meta: dict[str, Any] = {}
    if config == "scbench_choice_eng":
        options = [str(option) for option in _require(turn, "options", where)]
        if len(options) != len(LETTERS):
            raise UsageError(f"{where}: expected {len(LETTERS)} options, got {len(options)}")
        fields.update({f"option_{letter.lower()}": option for letter, option in zip(LETTERS, options, strict=True)})
        letters = [LETTERS[options.index(ref)] for ref in references if ref in options]
        references = references + [letter for letter in dict.fromkeys(letters) if letter not in references]
    elif config == "scbench_mf":
        found = _MF_TARGET.search(text)
        if found is None:
            raise UsageError(f"{where}: no 'The ... is' phrase in the input to build the question from")
        fields["prefix"] = f"What is {found.group(0).lower()[: -len(' is')]}?"
    if category == REPOQA:
        meta = {"name": str(_require(turn, "name", where)), "needles": needles}
    return Turn(fields=fields, references=references, category=category, meta=meta)
