"""Key-value retrieval: a JSON object of random UUID pairs; each turn asks for the value of a different key.

SCBench's Retr.KV (from InfiniteBench): nothing in the text hints at which pair matters, so a cache that keeps
only "important-looking" tokens has no semantic cue to follow. The number of pairs follows the token budget.
"""

from __future__ import annotations

import json
import random
import uuid

from cachebench.episodes import BuildRequest, Episode, Turn
from cachebench.tasks.builders.placement import depth_bucket


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def build(request: BuildRequest) -> list[Episode]:
    rng = random.Random(request.seed)
    asked = int(request.args.get("turns", 4))
    sample = {_uuid(rng): _uuid(rng) for _ in range(16)}
    pair_tokens = request.count_tokens(json.dumps(sample, indent=0)) / len(sample)
    pairs_per_episode = max(asked, round(request.context_tokens / pair_tokens))
    episodes = []
    for index in range(request.episodes):
        pairs = [(_uuid(rng), _uuid(rng)) for _ in range(pairs_per_episode)]
        context = json.dumps(dict(pairs), indent=0)
        # Ask one key from each stratum of the object, so every episode probes every depth.
        strata = [range(s * len(pairs) // asked, (s + 1) * len(pairs) // asked) for s in range(asked)]
        chosen = [rng.choice(stratum) for stratum in strata]
        rng.shuffle(chosen)
        turns = [
            Turn(
                fields={"input": f'Key: "{pairs[i][0]}"\nThe value associated with the specified key is: '},
                references=[pairs[i][1]],
                category=depth_bucket(i / len(pairs)),
            )
            for i in chosen
        ]
        episodes.append(Episode(f"kv-{request.seed}-{index}", {"context": context}, turns))
    return episodes
