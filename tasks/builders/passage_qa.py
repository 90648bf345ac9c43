"""QA over real passages (Quoref, DROP), several questions about one passage per episode.

Every turn asks about the same main passage, so the cache built for the context is reused by each question;
Quoref needs coreference across the passage and DROP needs counting and comparing over it, so dropping tokens
anywhere in the passage costs answers. When the task asks for a longer context, passages of other sets pad it
as numbered distractors, with the main passage at a seeded position among them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from cachebench.episodes import BuildRequest, Episode, Turn
from cachebench.errors import UsageError
from cachebench.tasks.builders.bigbench_passages import PassageSet, load_passages

DEFAULT_SOURCES = ("quoref", "drop")
SEPARATOR = "\n\n"


def build(request: BuildRequest) -> list[Episode]:
    """One episode per main passage set, in a seeded order, up to request.episodes."""
    sources = request.args.get("sources", DEFAULT_SOURCES)
    if isinstance(sources, str):
        sources = [sources]
    questions = int(request.args.get("questions", 4))
    if questions < 1:
        raise UsageError(f"passage_qa: questions must be at least 1, got {questions}")
    pool = [passage_set for source in sources for passage_set in load_passages(source)]
    rng = random.Random(request.seed)
    order = list(range(len(pool)))
    rng.shuffle(order)
    episodes = []
    for index, main_index in enumerate(order[: max(0, request.episodes)]):
        main = pool[main_index]
        asked = rng.sample(main.qa, min(questions, len(main.qa)))
        context = compose_context(pool, main_index, request.context_tokens, request.count_tokens, rng)
        turns = [Turn(fields={"input": q}, references=list(answers), category=main.source) for q, answers in asked]
        episodes.append(Episode(f"qa-{main.source}-{request.seed}-{index}", {"context": context}, turns))
    return episodes


def compose_context(
    pool: Sequence[PassageSet],
    main_index: int,
    target_tokens: int,
    count_tokens: Callable[[str], int],
    rng: random.Random,
) -> str:
    """The main passage alone, or numbered with distractors until the target is reached (overshoot < one passage)."""
    main = pool[main_index].passage
    if target_tokens <= 0 or count_tokens(main) >= target_tokens:
        return main
    others = [i for i in range(len(pool)) if i != main_index and pool[i].passage != main]
    rng.shuffle(others)
    separator_tokens = count_tokens(SEPARATOR) if SEPARATOR.strip() else 0
    total = count_tokens(f"Passage 1: {main}")
    distractors: list[str] = []
    for other in others:
        if total >= target_tokens:
            break
        text = pool[other].passage
        distractors.append(text)
        total += separator_tokens + count_tokens(f"Passage {len(distractors) + 1}: {text}")
    passages = list(distractors)
    passages.insert(rng.randint(0, len(distractors)), main)
    return SEPARATOR.join(f"Passage {n}: {text}" for n, text in enumerate(passages, start=1))
