"""rag.passages: retrieval-style episodes whose chunks come from one shared, seeded pool (offline).

KV-reuse methods (prefix caching, CacheBlend, KVLink) pay off when the same documents come back in later requests,
often in another order and next to other documents. Every episode here draws k chunks from a pool of real
passages and invented-fact chunks (see rag_pool), in a seeded order, so each chunk recurs across episodes at
different positions and a reuse method can serve it from its store. Turns ask about one chunk (`passage`: a real
Quoref/DROP question; `fact`: an invented fact) or about two chunks of the same episode (`two-hop`: who runs X in
one chunk, that person's phone number in another), so methods that skip cross-chunk attention lose the last kind
first. A turn's meta["support"] lists the positions of the chunks it needs; they are always in its episode.

Args (task YAML): sources, pool (chunks in the pool), fact_share, chunk_tokens (size of a chunk), chunks (per
episode; default: --context-tokens / the pool's mean chunk size), questions (per episode).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from statistics import mean
from typing import Any

from cachebench.episodes import BuildRequest, Episode, Turn
from cachebench.errors import UsageError
from cachebench.tasks.builders.bigbench_passages import PassageSet, load_passages
from cachebench.tasks.builders.rag_pool import Pool, build_pool
from cachebench.tasks.builders.rag_text import join_chunks

CATEGORIES = ("passage", "fact", "two-hop")
DEFAULT_SOURCES = ("quoref", "drop")
DEFAULT_CHUNKS = 4  # when neither args.chunks nor a context length is given


def build(request: BuildRequest) -> list[Episode]:
    """request.episodes episodes over one pool; the same seed gives the same pool, chunks, order and turns."""
    args = request.args
    sources = args.get("sources", DEFAULT_SOURCES)
    sources = [sources] if isinstance(sources, str) else list(sources)
    pool_size = _int_arg(args, "pool", 32, low=2)
    chunk_tokens = _int_arg(args, "chunk_tokens", 150, low=32)
    questions = _int_arg(args, "questions", 3, low=1)
    fact_share = float(args.get("fact_share", 0.5))
    if not 0 <= fact_share <= 1:
        raise UsageError(f"rag_passages: fact_share must be within [0, 1], got {fact_share}")
    passage_sets = [passage_set for source in sources for passage_set in load_passages(source)]
    rng = random.Random(request.seed)
    pool = _pool(passage_sets, pool_size, fact_share, chunk_tokens, request, random.Random(rng.random()))
    per_episode = _chunks_per_episode(args, pool, request)
    if 2 * per_episode > len(pool.chunks):  # a long --context-tokens: grow the pool so episodes still differ
        pool = _pool(passage_sets, 2 * per_episode, fact_share, chunk_tokens, request, random.Random(rng.random()))
        per_episode = min(per_episode, len(pool.chunks))
    return [
        _episode(pool, per_episode, questions, rng, f"rag-passages-{request.seed}-{index}")
        for index in range(max(0, request.episodes))
    ]


def _int_arg(args: Mapping[str, Any], name: str, default: int, low: int) -> int:
    value = int(args.get(name, default))
    if value < low:
        raise UsageError(f"rag_passages: {name} must be at least {low}, got {value}")
    return value


def _pool(passage_sets: Sequence[PassageSet], size: int, fact_share: float, chunk_tokens: int,
          request: BuildRequest, rng: random.Random) -> Pool:  # fmt: skip
    try:
        return build_pool(passage_sets, size, fact_share, chunk_tokens, request.count_tokens, rng)
    except ValueError as exc:
        raise UsageError(f"rag_passages: {exc}") from exc


def _chunks_per_episode(args: Mapping[str, Any], pool: Pool, request: BuildRequest) -> int:
    """args.chunks when set; else as many chunks of the pool's mean size as fit the context length (at least 2)."""
    if args.get("chunks") is not None:
        return _int_arg(args, "chunks", DEFAULT_CHUNKS, low=1)
    if request.context_tokens <= 0:
        return DEFAULT_CHUNKS
    size = mean(request.count_tokens(chunk.text) for chunk in pool.chunks)
    return max(2, int(request.context_tokens / size))


def _episode(pool: Pool, per_episode: int, questions: int, rng: random.Random, episode_id: str) -> Episode:
    """Pick each turn's chunks first, fill up with other pool chunks, then shuffle the chunk order."""
    chosen: list[int] = []
    plans: list[tuple[str, str, tuple[str, ...], tuple[int, ...]]] = []  # category, question, answers, chunks
    used_pairs: set[int] = set()
    asked: set[str] = set()
    order = rng.sample(CATEGORIES, len(CATEGORIES))
    for attempt in range(questions * len(CATEGORIES)):
        if len(plans) == questions:
            break
        plan = _plan(pool, order[attempt % len(order)], chosen, per_episode, used_pairs, asked, rng)
        if plan is None:
            continue
        plans.append(plan)
        asked.add(plan[1])
        chosen.extend(i for i in plan[3] if i not in chosen)
        used_pairs.update(pool.chunks[i].pair for i in plan[3] if pool.chunks[i].kind == "fact")
    rest = [i for i in range(len(pool.chunks)) if i not in chosen]
    chosen.extend(rng.sample(rest, per_episode - len(chosen)))
    rng.shuffle(chosen)
    position = {pool_index: at for at, pool_index in enumerate(chosen)}
    turns = [
        Turn(fields={"input": question}, references=list(answers), category=category,
             meta={"support": sorted(position[i] for i in needed)})
        for category, question, answers, needed in plans
    ]  # fmt: skip
    chunks = [pool.chunks[i].text for i in chosen]
    return Episode(episode_id, {"context": join_chunks(chunks)}, turns, chunks=chunks)


def _plan(pool: Pool, category: str, chosen: Sequence[int], per_episode: int, used_pairs: set[int],
          asked: set[str], rng: random.Random) -> tuple[str, str, tuple[str, ...], tuple[int, ...]] | None:  # fmt: skip
    """A turn of `category` whose chunks still fit in the episode, or None when none does."""
    room = per_episode - len(chosen)
    candidates = rng.sample(range(len(pool.chunks)), len(pool.chunks))
    for index in candidates:
        chunk = pool.chunks[index]
        new = 0 if index in chosen else 1
        if category == "passage" and chunk.kind == "passage" and new <= room:
            open_qa = [(q, a) for q, a in chunk.qa if q not in asked]
            if open_qa:
                question, answers = rng.choice(open_qa)
                return category, question, answers, (index,)
        elif chunk.kind == "fact" and chunk.pair not in used_pairs and chunk.role == "owner":
            pair = pool.pairs[chunk.pair]
            number = pool.fact_chunk(chunk.pair, "number")
            if category == "two-hop" and new + (number not in chosen) <= room:
                return category, pair.two_hop_question, (pair.number,), (index, number)
            if category == "fact" and new <= room:
                if rng.random() < 0.5:
                    return category, pair.owner_question, (pair.person,), (index,)
                if (number not in chosen) <= room:
                    return category, pair.number_question, (pair.number,), (number,)
    return None
