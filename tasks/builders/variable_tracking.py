"""Variable tracking: chains of assignments (VAR B = VAR A, ...) hidden in filler, one chain asked per turn.

RULER's variable tracking as SCBench's Retr.VT uses it: answering needs every hop of a chain, so a cache that
keeps some hops and drops others scores partial credit (string_match_all counts the names found).
"""

from __future__ import annotations

import random
import string

from cachebench.episodes import BuildRequest, Episode, Turn
from cachebench.tasks.builders.placement import fill_count, interleave, unit_tokens

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."


def _name(rng: random.Random, taken: set[str]) -> str:
    while True:
        name = "".join(rng.choice(string.ascii_uppercase) for _ in range(5))
        if name not in taken:
            taken.add(name)
            return name


def build(request: BuildRequest) -> list[Episode]:
    rng = random.Random(request.seed)
    chains_per_episode = int(request.args.get("chains", 3))
    hops = int(request.args.get("hops", 3))
    filler_tokens = unit_tokens(FILLER, request.count_tokens)
    episodes = []
    for index in range(request.episodes):
        taken: set[str] = set()
        values = rng.sample(range(10000, 100000), chains_per_episode)
        chains = [[_name(rng, taken) for _ in range(hops + 1)] for _ in values]
        statements: list[tuple[float, str]] = []
        for chain, value in zip(chains, values, strict=True):
            depths = sorted(rng.uniform(0.0, 1.0) for _ in chain)  # each hop after the one it refers to
            statements.append((depths[0], f"VAR {chain[0]} = {value}."))
            statements.extend(
                (depths[h], f"VAR {chain[h]} = VAR {chain[h - 1]}.") for h in range(1, len(chain))
            )
        statement_tokens = sum(request.count_tokens(text + " ") for _, text in statements)
        filler = [FILLER] * fill_count(request.context_tokens, statement_tokens, filler_tokens)
        context = interleave(filler, [text for _, text in statements], [depth for depth, _ in statements])
        order = rng.sample(range(chains_per_episode), chains_per_episode)
        turns = [
            Turn(
                fields={
                    "input": f"Find all variables that are assigned the value {values[i]} in the text above, "
                    "directly or through other variables. List their names."
                },
                references=list(chains[i]),
                category=f"hops-{hops}",
            )
            for i in order
        ]
        episodes.append(Episode(f"vt-{request.seed}-{index}", {"context": context}, turns))
    return episodes
