"""rag.musique: MuSiQue-Ans (Trivedi et al. 2022), one of CacheBlend's RAG datasets, as chunked episodes.

Loaded from the HF hub as `dgslibisey/MuSiQue`, split "validation" (the authors' musique_ans_v1.0_dev.jsonl,
2,417 answerable 2-4 hop questions); `--data FILE` takes a local JSONL of the same record shape:

    {"id": "2hop__...", "question": ..., "answer": ..., "answer_aliases": [...], "answerable": true,
     "paragraphs": [{"idx": 0, "title": ..., "paragraph_text": ..., "is_supporting": false}, ...],
     "question_decomposition": [...]}

Each record is one episode whose chunks are its ~20 paragraphs as "title\\ntext" (the retrieved documents that
CacheBlend prefills one by one), with one turn: the question, answered by the answer or any alias. With
--context-tokens the supporting paragraphs are kept and distractors fill the rest (rag_budget). Records marked
unanswerable (the musique_full files) are skipped.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from typing import Any

from cachebench.episodes import BuildRequest, Episode, Turn
from cachebench.errors import UsageError
from cachebench.tasks.builders.hub_records import load_records, record_id, require
from cachebench.tasks.builders.rag_budget import fit_chunks
from cachebench.tasks.builders.rag_text import join_chunks

HUB_DATASET = "dgslibisey/MuSiQue"
SPLIT = "validation"
SHAPE = "MuSiQue's"
_HOPS = re.compile(r"^(\d)hop")


def build(request: BuildRequest) -> list[Episode]:
    """One episode per answerable record, the first request.episodes of them."""
    records = load_records(HUB_DATASET, SPLIT, request.data_path, 0, SHAPE)
    rng = random.Random(request.seed)
    episodes = []
    for index, record in enumerate(records):
        if len(episodes) >= request.episodes:
            break
        if record.get("answerable") is False:
            continue
        episodes.append(_episode(record, index, request, rng))
    return episodes


def _episode(record: Mapping[str, Any], index: int, request: BuildRequest, rng: random.Random) -> Episode:
    ident = record_id(record, index)
    where = f"MuSiQue record {ident}"
    paragraphs = require(record, "paragraphs", where, SHAPE)
    if not isinstance(paragraphs, list) or not paragraphs:
        raise UsageError(f"{where}: 'paragraphs' must be a non-empty list (expected {SHAPE} record shape)")
    texts, supporting = [], []
    for number, paragraph in enumerate(paragraphs):
        if not isinstance(paragraph, Mapping):
            raise UsageError(f"{where}: paragraph {number} is not an object (expected {SHAPE} record shape)")
        title = str(paragraph.get("title") or "").strip()
        text = str(require(paragraph, "paragraph_text", f"{where} paragraph {number}", SHAPE)).strip()
        texts.append(f"{title}\n{text}" if title else text)
        if paragraph.get("is_supporting"):
            supporting.append(number)
    chunks, support = fit_chunks(texts, supporting, request.context_tokens, request.count_tokens, rng)
    answer = str(require(record, "answer", where, SHAPE))
    aliases = [str(alias) for alias in record.get("answer_aliases") or []]
    hops = _HOPS.match(ident)
    turn = Turn(
        fields={"input": str(require(record, "question", where, SHAPE))},
        references=list(dict.fromkeys([answer, *aliases])),
        category=f"{hops.group(1)}-hop" if hops else "musique",
        meta={"support": support},
    )
    return Episode(f"musique-{ident}", {"context": join_chunks(chunks)}, [turn], chunks=chunks)
