"""Multi-needle passkey retrieval: several labelled pass keys hidden in filler, one asked per turn.

The classic passkey test (Mohtashami & Jaggi, 2023; SCBench's Retr.Passkey) with one needle per turn: each
needle has its own label, so a turn can only be answered from that needle's tokens, wherever they sit. A cache
that drops the middle of the context loses the middle needles.
"""

from __future__ import annotations

import random

from cachebench.episodes import BuildRequest, Episode, Turn
from cachebench.tasks.builders.placement import depth_bucket, fill_count, interleave, spread_depths, unit_tokens

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
LABELS = (
    "red door", "blue box", "green gate", "yellow safe", "silver locker", "black chest", "white drawer",
    "orange vault", "purple cabinet", "brown trunk", "golden case", "grey cupboard",
)  # fmt: skip


def build(request: BuildRequest) -> list[Episode]:
    rng = random.Random(request.seed)
    needles_per_episode = int(request.args.get("needles", 4))
    if needles_per_episode > len(LABELS):
        raise ValueError(f"passkey supports at most {len(LABELS)} needles per episode")
    filler_tokens = unit_tokens(FILLER, request.count_tokens)
    episodes = []
    for index in range(request.episodes):
        labels = rng.sample(LABELS, needles_per_episode)
        keys = rng.sample(range(10000, 100000), needles_per_episode)
        needles = [
            f"The pass key for the {label} is {key}. Remember it. {key} is the pass key for the {label}."
            for label, key in zip(labels, keys, strict=True)
        ]
        needle_tokens = sum(request.count_tokens(n + " ") for n in needles)
        filler = [FILLER] * fill_count(request.context_tokens, needle_tokens, filler_tokens)
        depths = spread_depths(needles_per_episode, rng)
        context = interleave(filler, needles, depths)
        order = rng.sample(range(needles_per_episode), needles_per_episode)  # ask in a different order
        turns = [
            Turn(
                fields={"input": f"What is the pass key for the {labels[i]}?"},
                references=[str(keys[i])],
                category=depth_bucket(depths[i]),
            )
            for i in order
        ]
        episodes.append(Episode(f"passkey-{request.seed}-{index}", {"context": context}, turns))
    return episodes
