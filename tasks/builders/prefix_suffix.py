"""Prefix-suffix retrieval: a list of random strings; each turn names a prefix and a suffix and asks for the
whole string (SCBench's Retr.Prefix-Suffix). Strings share characters, so only the exact tokens identify one."""

from __future__ import annotations

import random
import string
from functools import partial

from cachebench.episodes import BuildRequest, Episode, Turn
from cachebench.tasks.builders.placement import depth_bucket, generate_until

ALPHABET = string.ascii_letters + string.digits


def _fresh_string(rng: random.Random, length: int, affix: int, seen_affixes: set[str]) -> str:
    """A random string whose prefix and suffix no earlier string of the episode used (answers are unique)."""
    while True:
        candidate = "".join(rng.choice(ALPHABET) for _ in range(length))
        if candidate[:affix] not in seen_affixes and candidate[-affix:] not in seen_affixes:
            seen_affixes.update((candidate[:affix], candidate[-affix:]))
            return candidate


def build(request: BuildRequest) -> list[Episode]:
    rng = random.Random(request.seed)
    asked = int(request.args.get("turns", 4))
    length = int(request.args.get("length", 12))
    affix = int(request.args.get("affix", 4))
    episodes = []
    for index in range(request.episodes):
        fresh = partial(_fresh_string, rng, length, affix, set())
        items = generate_until(request.context_tokens, fresh, request.count_tokens)
        items = items if len(items) >= asked else items + [fresh() for _ in range(asked - len(items))]
        context = "\n".join(items)
        strata = [range(s * len(items) // asked, (s + 1) * len(items) // asked) for s in range(asked)]
        chosen = [rng.choice(stratum) for stratum in strata]
        rng.shuffle(chosen)
        turns = [
            Turn(
                fields={
                    "input": f'Which string in the list above starts with "{items[i][:affix]}" and ends with '
                    f'"{items[i][-affix:]}"? Answer with the whole string only.'
                },
                references=[items[i]],
                category=depth_bucket(i / len(items)),
            )
            for i in chosen
        ]
        episodes.append(Episode(f"prefix_suffix-{request.seed}-{index}", {"context": context}, turns))
    return episodes
