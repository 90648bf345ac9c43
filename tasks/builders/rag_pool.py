"""The shared chunk pool of rag.passages: short real passages with their questions, and invented-fact chunks.

Real passages (Quoref, DROP, from the bigbench sdist) are cut to their leading sentences so each chunk stays near
the requested size; a question is kept only when one of its answers still occurs in the kept text as whole
words. Fact chunks are other real passages' leading sentences with one invented fact sentence inserted at a
seeded sentence boundary. Everything is drawn from one seeded random generator, so a seed fixes the pool.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cachebench.tasks.builders.bigbench_passages import PassageSet
from cachebench.tasks.builders.rag_facts import FactPair, invent_pairs
from cachebench.tasks.builders.rag_text import clean, contains_phrase, leading_sentences, lexical_support, sentences

QA = tuple[tuple[str, tuple[str, ...]], ...]  # (question, accepted answers)
MIN_SUPPORT = 0.5  # share of a question's content words the answer's sentence must hold
# DROP questions that compute rather than look up ("How many more yards ...", "... combined?")
_ARITHMETIC = re.compile(r"\b(more|fewer|less|difference|combined|total|together|percent|average)\b", re.IGNORECASE)


@dataclass(frozen=True)
class PoolChunk:
    """One reusable document. Passage chunks carry their real questions; fact chunks their pair and role."""

    text: str
    kind: str  # "passage" or "fact"
    qa: QA = ()  # questions answerable from this chunk alone
    pair: int = -1  # fact chunks: index of their FactPair in the pool
    role: str = ""  # fact chunks: "owner" (who runs the organisation) or "number" (the person's phone number)


@dataclass(frozen=True)
class Pool:
    chunks: tuple[PoolChunk, ...]
    pairs: tuple[FactPair, ...]

    def fact_chunk(self, pair: int, role: str) -> int:
        """Index of the chunk that states `role` of fact pair `pair`."""
        return next(i for i, c in enumerate(self.chunks) if c.pair == pair and c.role == role)


def build_pool(
    passage_sets: Sequence[PassageSet],
    size: int,
    fact_share: float,
    chunk_tokens: int,
    count_tokens: Callable[[str], int],
    rng: random.Random,
) -> Pool:
    """`size` chunks, about `fact_share` of them fact chunks (always whole pairs), in a seeded order."""
    pair_count = max(1, round(size * fact_share / 2)) if fact_share > 0 else 0
    passage_count = size - 2 * pair_count
    if passage_count < 0 or (passage_count == 0 and fact_share < 1):
        raise ValueError(f"a pool of {size} chunks leaves no room for real passages at fact_share {fact_share}")
    unused = iter(rng.sample(list(passage_sets), len(passage_sets)))  # every chunk from another passage
    min_tokens = chunk_tokens // 2
    passages: list[PoolChunk] = []
    while len(passages) < passage_count and (passage_set := next(unused, None)) is not None:
        parts = leading_sentences(sentences(passage_set.passage), chunk_tokens, count_tokens)
        qa = _answerable(passage_set, parts)
        if qa and count_tokens(" ".join(parts)) >= min_tokens:
            passages.append(PoolChunk(" ".join(parts), "passage", qa))
    pairs = invent_pairs(pair_count, rng)
    facts: list[PoolChunk] = []
    for index, pair in enumerate(pairs):
        for role, fact in (("owner", pair.owner_sentence), ("number", pair.number_sentence)):
            budget = chunk_tokens - count_tokens(fact)
            for passage_set in unused:
                parts = leading_sentences(sentences(passage_set.passage), budget, count_tokens)
                if parts and count_tokens(" ".join(parts)) >= min_tokens:
                    parts.insert(rng.randint(0, len(parts)), fact)  # at a seeded sentence boundary
                    facts.append(PoolChunk(" ".join(parts), "fact", pair=index, role=role))
                    break
    if len(passages) < passage_count or len(facts) < 2 * pair_count:
        raise ValueError(f"only {len(passages) + len(facts)} usable chunks for a pool of {size}")
    chunks = passages + facts
    rng.shuffle(chunks)
    return Pool(tuple(chunks), tuple(pairs))


def _answerable(passage_set: PassageSet, parts: Sequence[str]) -> QA:
    """The set's questions that the kept sentences answer locally, with the answers found there.

    An answer must occur as whole words in one kept sentence that also holds at least MIN_SUPPORT of the question's
    content words, and the question must not ask for arithmetic: the rest of the passage is gone, and a question
    that needs it (or sums over it) would measure the cut, not the cache.
    """
    kept = []
    for question, answers in passage_set.qa:
        if _ARITHMETIC.search(question):
            continue
        found: dict[str, None] = {}
        for sentence in parts:
            if lexical_support(question, sentence) >= MIN_SUPPORT:
                found.update((clean(a), None) for a in answers if contains_phrase(sentence, a))
        if found:
            kept.append((question, tuple(found)))
    return tuple(kept)
