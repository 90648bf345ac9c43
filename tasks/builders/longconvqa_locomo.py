"""longconvqa.locomo: LoCoMo (Maharana et al., ACL 2024), QA over very long two-person conversations.

LoCoMo is not on the HF hub: get `data/locomo10.json` from github.com/snap-research/locomo and pass it with
`--data FILE` (a JSON array, as published, or JSON lines). A sample:

    {"sample_id": "conv-26",
     "conversation": {"speaker_a": "Caroline", "speaker_b": "Melanie",
                      "session_1_date_time": "1:56 pm on 8 May, 2023",
                      "session_1": [{"speaker": "Caroline", "dia_id": "D1:1", "text": ..., "blip_caption"?: ...}],
                      "session_2_date_time": ..., "session_2": [...], ...},
     "qa": [{"question": ..., "answer": ..., "evidence": ["D1:3"], "category": 2}, ...]}

One episode per sample; its turns are its QA items (builder arg `questions`: at most this many per episode,
taken round-robin over the categories in file order so a cap keeps every type; 0 = all). Category, from LoCoMo's
numbers: 1 multi-hop, 2 temporal, 3 open-domain, 4 single-hop, 5 adversarial. As in LoCoMo's evaluation, an
open-domain answer keeps its part before the first ";", a multi-hop answer is scored per comma-separated part,
and adversarial items (asking about something never said; they carry `adversarial_answer`, often no `answer`)
have the reference "not mentioned" and count as correct when the reply says it is not mentioned. A turn that
shares an image keeps its caption as "[shares <caption>]", as LoCoMo's own prompts do.

The history renders each session as "Session n (date time):" and one "Speaker: text" line per turn. Sizing: with
--context-tokens, sessions holding no evidence of the episode's questions are dropped, oldest first, until it
fits; evidence sessions are always kept.
"""

from __future__ import annotations

import re
from typing import Any

from cachebench.episodes import BuildRequest, Episode, Turn
from cachebench.errors import UsageError
from cachebench.metrics import NOT_MENTIONED, longconvqa_meta
from cachebench.tasks.builders.longconvqa_records import fit_sessions, read_records, require_field

SHAPE = "LoCoMo's"
CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}
ADVERSARIAL = 5
_SESSION = re.compile(r"^session_(\d+)$")
_DIALOGUE = re.compile(r"D(\d+):\d+")


def build(request: BuildRequest) -> list[Episode]:
    """One episode per sample, the first request.episodes of them."""
    if not request.data_path:
        raise UsageError("longconvqa.locomo needs --data FILE: LoCoMo is not on the HF hub; download "
                         "data/locomo10.json from github.com/snap-research/locomo")  # fmt: skip
    cap = int(request.args.get("questions", 0))
    records = read_records(request.data_path, request.data_path, SHAPE)
    return [_episode(record, f"{request.data_path} record {index}", request, cap) for index, record in
            enumerate(records[: max(0, request.episodes)])]  # fmt: skip


def _episode(record: Any, where: str, request: BuildRequest, cap: int) -> Episode:
    sample_id = str(require_field(record, "sample_id", (str, int), where, SHAPE))
    conversation = require_field(record, "conversation", dict, where, SHAPE)
    qa = require_field(record, "qa", list, where, SHAPE)
    numbers = sorted(int(m.group(1)) for key in conversation if (m := _SESSION.match(key)))
    if not numbers:
        raise UsageError(f"{where}: 'conversation' has no session_<n> lists (expected {SHAPE} record shape)")
    sessions, session_numbers = [], []
    for number in numbers:
        key = f"session_{number}"
        turns = require_field(conversation, key, list, f"{where} conversation", SHAPE)
        date = require_field(conversation, f"{key}_date_time", str, f"{where} conversation", SHAPE)
        lines = []
        for position, turn in enumerate(turns):
            at = f"{where} {key} turn {position}"
            speaker = require_field(turn, "speaker", str, at, SHAPE)
            text = str(require_field(turn, "text", (str, int, float), at, SHAPE))
            caption = turn.get("blip_caption")
            lines.append((speaker, f"{text} [shares {caption}]" if caption else text))
        sessions.append((date, lines))
        session_numbers.append(number)
    items = _capped([_item(item, f"{where} qa {n}") for n, item in enumerate(qa)], cap)
    if not items:
        raise UsageError(f"{where}: no qa items")
    evidence = {int(m.group(1)) for item in items for m in _DIALOGUE.finditer(" ".join(item["evidence"]))}
    keep = {i for i, number in enumerate(session_numbers) if number in evidence}
    context = fit_sessions(sessions, keep, request.context_tokens, request.count_tokens)
    turns = [Turn(fields={"input": item["question"]}, references=item["references"], category=item["category"],
                  meta={**longconvqa_meta(item["category"], item["references"]), "evidence": item["evidence"]})
             for item in items]  # fmt: skip
    return Episode(f"locomo-{sample_id}", {"context": context}, turns)


def _item(item: Any, where: str) -> dict[str, Any]:
    question = require_field(item, "question", str, where, SHAPE)
    number = require_field(item, "category", int, where, SHAPE)
    if number not in CATEGORIES:
        raise UsageError(f"{where}: category {number} is not one of 1-5 (expected {SHAPE} record shape)")
    evidence = item.get("evidence") or []
    if not isinstance(evidence, list):
        raise UsageError(f"{where}: 'evidence' must be a list, got {type(evidence).__name__}")
    if number == ADVERSARIAL:
        references = [NOT_MENTIONED]
    else:
        answer = str(require_field(item, "answer", (str, int, float), where, SHAPE))
        references = [answer.split(";")[0].strip() if number == 3 else answer]
    return {"question": question, "category": CATEGORIES[number], "references": references,
            "evidence": [str(e) for e in evidence]}  # fmt: skip


def _capped(items: list[dict[str, Any]], cap: int) -> list[dict[str, Any]]:
    """At most `cap` items (all when cap <= 0), taken round-robin over categories, each in file order, and
    returned in file order."""
    if cap <= 0 or len(items) <= cap:
        return items
    queues: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        queues.setdefault(item["category"], []).append(index)
    chosen: list[int] = []
    while len(chosen) < cap:
        for queue in queues.values():
            if queue and len(chosen) < cap:
                chosen.append(queue.pop(0))
    return [items[i] for i in sorted(chosen)]
