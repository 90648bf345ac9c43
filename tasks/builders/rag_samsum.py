"""rag.samsum: few-shot dialogue summarisation on SAMSum (Gliwa et al. 2019), as CacheBlend and LongBench run it.

Loaded from the HF hub as `knkarthick/samsum`, split "test" (819 records of {id, dialogue, summary}); `--data FILE`
takes a local JSONL (or JSON array) of that shape.

The in-context examples are the chunks: the first `pool` records form a shared pool of "Dialogue: ...\\nSummary:
..." examples, and every episode draws `shots` of them in a seeded order, so the same example recurs across
episodes at different positions (what a KV-reuse method stores once and serves again). The records after the
pool are the dialogues to summarise, `questions` per episode (each its own turn), scored by ROUGE-L against the
reference summary.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from statistics import mean
from typing import Any

from cachebench.episodes import BuildRequest, Episode, Turn
from cachebench.errors import UsageError
from cachebench.tasks.builders.hub_records import load_records, record_id, require
from cachebench.tasks.builders.rag_text import join_chunks

HUB_DATASET = "knkarthick/samsum"
SPLIT = "test"
SHAPE = "SAMSum's"
DEFAULT_SHOTS = 3


def build(request: BuildRequest) -> list[Episode]:
    """Episodes of `shots` pooled examples each, asking to summarise the records that follow the pool."""
    pool_size = _int_arg(request.args, "pool", 16, low=1)
    questions = _int_arg(request.args, "questions", 2, low=1)
    wanted = pool_size + max(0, request.episodes) * questions
    records = load_records(HUB_DATASET, SPLIT, request.data_path, wanted, SHAPE)
    dialogues = [_dialogue(record, index) for index, record in enumerate(records)]
    pool_size = min(pool_size, len(dialogues) - 1)
    if pool_size < 1:
        raise UsageError(f"SAMSum: {len(dialogues)} record(s) leave no dialogue to summarise after the example pool")
    pool = [f"Dialogue: {dialogue}\nSummary: {summary}" for _, dialogue, summary in dialogues[:pool_size]]
    shots = min(_shots(request, pool), pool_size)
    queries = dialogues[pool_size:]
    rng = random.Random(request.seed)
    episodes = []
    for start in range(0, len(queries), questions):
        if len(episodes) >= request.episodes:
            break
        chunks = rng.sample(pool, shots)
        turns = [
            Turn(fields={"input": dialogue}, references=[summary], category="samsum", meta={"record": ident})
            for ident, dialogue, summary in queries[start : start + questions]
        ]
        episodes.append(Episode(f"samsum-{request.seed}-{len(episodes)}", {"context": join_chunks(chunks)}, turns,
                                chunks=chunks))  # fmt: skip
    return episodes


def _int_arg(args: Mapping[str, Any], name: str, default: int, low: int) -> int:
    value = int(args.get(name, default))
    if value < low:
        raise UsageError(f"rag_samsum: {name} must be at least {low}, got {value}")
    return value


def _shots(request: BuildRequest, pool: list[str]) -> int:
    """args.shots when set; else as many examples of the pool's mean size as fit --context-tokens; else 3."""
    if request.args.get("shots") is not None:
        return _int_arg(request.args, "shots", DEFAULT_SHOTS, low=1)
    if request.context_tokens <= 0:
        return DEFAULT_SHOTS
    return max(1, int(request.context_tokens / mean(request.count_tokens(example) for example in pool)))


def _dialogue(record: Mapping[str, Any], index: int) -> tuple[str, str, str]:
    """(id, dialogue, summary) with SAMSum's CRLF line ends made plain newlines."""
    ident = record_id(record, index)
    where = f"SAMSum record {ident}"
    dialogue = str(require(record, "dialogue", where, SHAPE)).replace("\r\n", "\n").strip()
    summary = str(require(record, "summary", where, SHAPE)).strip()
    return ident, dialogue, summary
