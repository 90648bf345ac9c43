"""rag.2wikimqa: 2WikiMultihopQA (Ho et al. 2020), one of CacheBlend's RAG datasets, as chunked episodes.

Loaded from the HF hub as `framolfese/2WikiMultihopQA`, split "validation" (12,576 questions); `--data FILE` takes
a local JSONL (or JSON array, as the authors ship dev.json) of the same record shape:

    {"_id": ..., "type": "compositional", "question": ..., "answer": ...,
     "context": [[title, [sentence, ...]], ...], "supporting_facts": [[title, sentence_index], ...]}

The hub copy stores `context` and `supporting_facts` as HF dicts of lists ({"title": [...], "sentences": [[...]]}
and {"title": [...], "sent_id": [...]}); both forms are read. Each record is one episode whose chunks are its ten
paragraphs as "title\\ntext", with one turn (the question, category = the question type). With --context-tokens
the paragraphs named by supporting_facts are kept and distractors fill the rest (rag_budget).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from cachebench.episodes import BuildRequest, Episode, Turn
from cachebench.errors import UsageError
from cachebench.tasks.builders.hub_records import load_records, record_id, require
from cachebench.tasks.builders.rag_budget import fit_chunks
from cachebench.tasks.builders.rag_text import join_chunks

HUB_DATASET = "framolfese/2WikiMultihopQA"
SPLIT = "validation"
SHAPE = "2WikiMultihopQA's"


def build(request: BuildRequest) -> list[Episode]:
    """One episode per record, the first request.episodes of them."""
    records = load_records(HUB_DATASET, SPLIT, request.data_path, request.episodes, SHAPE)
    rng = random.Random(request.seed)
    return [_episode(record, index, request, rng) for index, record in enumerate(records)]


def paragraphs(context: Any, where: str) -> list[tuple[str, list[str]]]:
    """(title, sentences) pairs from the list-of-pairs form or the dict-of-lists form."""
    if isinstance(context, Mapping):
        titles = context.get("title")
        bodies = context.get("sentences", context.get("content"))
        if not isinstance(titles, list) or not isinstance(bodies, list) or len(titles) != len(bodies):
            raise UsageError(f"{where}: 'context' needs equally long 'title' and 'sentences' lists")
        pairs = list(zip(titles, bodies, strict=True))
    elif isinstance(context, list):
        if not all(isinstance(pair, list | tuple) and len(pair) == 2 for pair in context):
            raise UsageError(f"{where}: 'context' must hold [title, sentences] pairs (expected {SHAPE} record shape)")
        pairs = [(pair[0], pair[1]) for pair in context]
    else:
        raise UsageError(f"{where}: 'context' must be a list of [title, sentences] pairs or a dict of lists")
    out = []
    for title, body in pairs:
        sentences = [body] if isinstance(body, str) else list(body or [])
        out.append((str(title), [str(sentence) for sentence in sentences]))
    return out


def supporting_titles(facts: Any) -> set[str]:
    """Titles named by supporting_facts, in either form (missing: none)."""
    if isinstance(facts, Mapping):
        return {str(title) for title in facts.get("title") or []}
    return {str(fact[0]) for fact in facts or [] if isinstance(fact, list | tuple) and fact}


def _episode(record: Mapping[str, Any], index: int, request: BuildRequest, rng: random.Random) -> Episode:
    ident = record_id(record, index)
    where = f"2WikiMultihopQA record {ident}"
    pairs = paragraphs(require(record, "context", where, SHAPE), where)
    if not pairs:
        raise UsageError(f"{where}: 'context' is empty")
    titles = supporting_titles(record.get("supporting_facts"))
    texts = [f"{title}\n{' '.join(s.strip() for s in sentences)}" for title, sentences in pairs]
    supporting = [number for number, (title, _) in enumerate(pairs) if title in titles]
    chunks, support = fit_chunks(texts, supporting, request.context_tokens, request.count_tokens, rng)
    turn = Turn(
        fields={"input": str(require(record, "question", where, SHAPE))},
        references=[str(require(record, "answer", where, SHAPE))],
        category=str(record.get("type") or "2wikimqa"),
        meta={"support": support},
    )
    return Episode(f"2wikimqa-{ident}", {"context": join_chunks(chunks)}, [turn], chunks=chunks)
