"""longconvqa.longmemeval: LongMemEval (Wu et al., ICLR 2025), QA over a user's long chat history with an
assistant.

Loaded from the HF hub dataset `xiaowu0162/longmemeval` (builder arg `file`: longmemeval_s.json by default, or
longmemeval_m.json / longmemeval_oracle.json), downloaded as a file only when the hub can be reached; otherwise
`--data FILE` takes a local copy (a JSON array, as published, or JSON lines). A record:

    {"question_id": "e47becba", "question_type": "single-session-user", "question": ..., "answer": ...,
     "question_date": "2023/05/30 (Tue) 23:40", "haystack_dates": [...], "haystack_session_ids": [...],
     "haystack_sessions": [[{"role": "user", "content": ..., "has_answer": true}, ...], ...],
     "answer_session_ids": [...]}

One episode per record (the first --limit of them), one turn: the question, with `question_date` as a template
field. Category: the question type (single-session-user, single-session-assistant, single-session-preference,
multi-session, temporal-reasoning, knowledge-update), or `abstention` for ids ending in "_abs"; an abstention
item's reference is "not mentioned" and its scorer asks whether the reply says so (its explanation stays in
meta["explanation"]). The history renders each session as "Session n (date):" and one "user: ..." /
"assistant: ..." line per turn, in the file's (chronological) order.

Sizing: with --context-tokens, sessions that are not answer sessions (listed in answer_session_ids, or holding a
turn marked has_answer) are dropped, oldest first, until the history fits; answer sessions are always kept.
Without it the whole haystack is used (LongMemEval_S: ~115k tokens, for real long-context models).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cachebench.episodes import BuildRequest, Episode, Turn
from cachebench.errors import UsageError
from cachebench.hub import hub_endpoint, hub_reachable
from cachebench.metrics import NOT_MENTIONED, longconvqa_meta
from cachebench.tasks.builders.hub_records import one_line
from cachebench.tasks.builders.longconvqa_records import fit_sessions, read_records, require_field

HUB_DATASET = "xiaowu0162/longmemeval"
DEFAULT_FILE = "longmemeval_s.json"
SHAPE = "LongMemEval's"
ROLES = ("user", "assistant")


def build(request: BuildRequest) -> list[Episode]:
    """One episode per record, the first request.episodes of them."""
    if request.data_path:
        path, label = request.data_path, request.data_path
    else:
        path, label = _download(str(request.args.get("file", DEFAULT_FILE)))
    records = read_records(path, label, SHAPE)
    return [_episode(record, f"{label} record {index}", request) for index, record in
            enumerate(records[: max(0, request.episodes)])]  # fmt: skip


def _download(filename: str) -> tuple[str, str]:
    label = f"{HUB_DATASET}/{filename}"
    if not hub_reachable():
        raise UsageError(f"{label}: {hub_endpoint()} cannot be reached; --data FILE takes a local copy of "
                         f"LongMemEval's JSON ({filename})")  # fmt: skip
    try:
        from huggingface_hub import hf_hub_download

        return hf_hub_download(HUB_DATASET, filename, repo_type="dataset"), label
    except Exception as exc:  # network, auth and missing-file errors all mean "no data"
        raise UsageError(f"could not download {label} ({one_line(exc)}); --data FILE takes a local copy") from exc


def _episode(record: Any, where: str, request: BuildRequest) -> Episode:
    question_id = str(require_field(record, "question_id", (str, int), where, SHAPE))
    question_type = require_field(record, "question_type", str, where, SHAPE)
    question = require_field(record, "question", str, where, SHAPE)
    answer = require_field(record, "answer", (str, int, float), where, SHAPE)
    question_date = require_field(record, "question_date", str, where, SHAPE)
    sessions = require_field(record, "haystack_sessions", list, where, SHAPE)
    dates = require_field(record, "haystack_dates", list, where, SHAPE)
    ids = require_field(record, "haystack_session_ids", list, where, SHAPE)
    answer_ids = {str(i) for i in require_field(record, "answer_session_ids", list, where, SHAPE)}
    if not len(sessions) == len(dates) == len(ids):
        raise UsageError(f"{where}: haystack_sessions, haystack_dates and haystack_session_ids differ in length "
                         f"({len(sessions)}, {len(dates)}, {len(ids)})")  # fmt: skip
    rendered, keep = [], set()
    for number, (session, date, session_id) in enumerate(zip(sessions, dates, ids, strict=True)):
        at = f"{where} session {number}"
        if not isinstance(session, list):
            raise UsageError(f"{at}: must be a list of turns (expected {SHAPE} record shape)")
        lines = []
        for position, turn in enumerate(session):
            role = require_field(turn, "role", str, f"{at} turn {position}", SHAPE)
            if role not in ROLES:
                raise UsageError(f"{at} turn {position}: role {role!r} is not user or assistant")
            lines.append((role, require_field(turn, "content", str, f"{at} turn {position}", SHAPE)))
            if isinstance(turn, Mapping) and turn.get("has_answer"):
                keep.add(number)
        if str(session_id) in answer_ids:
            keep.add(number)
        rendered.append((str(date), lines))
    context = fit_sessions(rendered, keep, request.context_tokens, request.count_tokens)
    abstention = question_id.endswith("_abs")
    category = "abstention" if abstention else question_type
    references = [NOT_MENTIONED] if abstention else [str(answer)]
    meta: dict[str, Any] = {**longconvqa_meta(category, references), "question_id": question_id}
    if abstention:
        meta["explanation"] = str(answer)
    turn = Turn(fields={"input": question, "question_date": question_date}, references=references,
                category=category, meta=meta)  # fmt: skip
    return Episode(f"longmemeval-{question_id}", {"context": context}, [turn])
