"""Fit a record's retrieved paragraphs to a context length: the supporting ones always, distractors while they fit.

MuSiQue and 2WikiMultihopQA give every question its own paragraph list (supporting + distractors, 2k-3k tokens).
A smaller model or a shorter run asks for fewer tokens; dropping distractors (never a supporting paragraph) keeps
every question answerable, and a seeded order keeps the supporting paragraphs from always sitting first.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from cachebench.tasks.builders.rag_text import JOINER


def fit_chunks(
    chunks: Sequence[str],
    supporting: Sequence[int],
    budget: int,
    count_tokens: Callable[[str], int],
    rng: random.Random,
) -> tuple[list[str], list[int]]:
    """The kept chunks and the positions of the supporting ones among them.

    budget <= 0 keeps every chunk in the dataset's order. Otherwise the supporting chunks are kept (even past the
    budget), distractors are added in a seeded order while the total stays within it, and the kept chunks are
    shuffled with the same generator.
    """
    wanted = sorted(set(supporting))
    if budget <= 0:
        return list(chunks), wanted
    joiner_tokens = max(1, count_tokens(JOINER))  # a word counter sees no tokens in white space
    kept = list(wanted)
    total = sum(count_tokens(chunks[i]) for i in kept) + joiner_tokens * max(0, len(kept) - 1)
    distractors = [i for i in range(len(chunks)) if i not in wanted]
    rng.shuffle(distractors)
    for index in distractors:
        cost = count_tokens(chunks[index]) + (joiner_tokens if kept else 0)
        if total + cost <= budget:
            kept.append(index)
            total += cost
    rng.shuffle(kept)
    return [chunks[i] for i in kept], sorted(kept.index(i) for i in wanted)
