"""semantic.pairs: the generator's classes as a pair workload (GPTCache's and MeanCache's protocol: insert every
first item, then look up every second item), built to probe where a threshold breaks.

Positives are two paraphrases of one class. Hard negatives differ in one slot and are phrased with the same
template: "Reverse a list in Python" / "Reverse a string in Python", the capital of France / of Germany, a poem /
a joke about the ocean. Follow-up pairs (MeanCache's contextual case) put a generic follow-up under a parent
query, kept in Stream.ancestors: the positive repeats the follow-up under a paraphrase of the parent; the trap
puts the very same follow-up text under a slot variant of the parent, a different class that must not hit.

Pairs have no clock: every timestamp is 0, so time-sensitive answers are those of the stream's first period.

Scaling: the written classes are sized for the default 1,000 pairs; a larger set (`--requests N` or the
`pairs` knob) grows each uncapped category's classes to round(written x pairs / 1000) with semantic.stream's
generated tail, whose hard negatives are its slot neighbours (the same relation about another made-up entity,
the same task in another language). Up to 1,000 pairs the set is exactly the written pool's.

Knobs (the task YAML's args):
  pairs            number of pairs (default 1000; --requests N overrides it); --limit N keeps the first N
  mix              {category: share} of pairs (default as semantic.stream)
  positives        share of pairs that are positives (default 0.5)
  followup_pairs   share of pairs that are follow-up pairs, positives and traps alike (default 0.2)
  paraphrases      templates each class is asked with: 0 = all, k = a seeded subset of k (default 0)
  classes          {category: n} keep only the n first classes of the seeded ranking (default all)
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from itertools import accumulate
from typing import Any

from cachebench.errors import UsageError
from cachebench.semantic.stream import Request, Stream, StreamRequest
from cachebench.tasks.builders.semantic_generator import DEFAULT_MIX, DEFAULT_PERIOD
from cachebench.tasks.builders.semantic_knobs import check_known, number, per_category, requested
from cachebench.tasks.builders.semantic_pool import Meaning, Pool
from cachebench.tasks.builders.semantic_templates import CATEGORIES, Intent

OWNER = "semantic_generator_pairs"
KNOBS = ("pairs", "mix", "positives", "followup_pairs", "paraphrases", "classes")
GENERATED = True  # --requests sizes this task (semantic_knobs.check_requests)
BASE_PAIRS = 1000  # the set size the written classes are sized for; larger sets grow a tail


def build_stream(request: StreamRequest) -> Stream:
    """The pair workload (request.requests pairs when given), truncated to request.limit pairs."""
    args: Mapping[str, Any] = request.args
    check_known(args, KNOBS, OWNER)
    planned = requested(request.requests, args, "pairs", BASE_PAIRS, OWNER)
    count = planned if request.limit is None else min(planned, max(0, request.limit))
    mix = per_category(args, "mix", DEFAULT_MIX, CATEGORIES, OWNER, replace=True)
    if sum(mix.values()) <= 0:
        raise UsageError(f"{OWNER} args: mix gives every category a share of 0")
    positives = number(args, "positives", 0.5, OWNER, low=0.0, high=1.0)
    followups = number(args, "followup_pairs", 0.2, OWNER, low=0.0, high=1.0)
    pool = Pool(request.seed, {}, {"time-sensitive": DEFAULT_PERIOD},
                int(number(args, "paraphrases", 0, OWNER, low=0, integer=True)),
                per_category(args, "classes", {}, CATEGORIES, OWNER), scale=planned / BASE_PAIRS)
    rng = random.Random(request.seed)
    categories = [name for name in CATEGORIES if mix[name] > 0]
    cum = list(accumulate(mix[name] for name in categories))
    stream = Stream(name="generator-pairs", protocol="pair", categories=CATEGORIES)
    for _ in range(count * 50):  # a draw without a usable variant adds nothing; this bounds a hopeless mix
        if len(stream.pairs) >= count:
            break
        category = rng.choices(categories, cum_weights=cum)[0]
        positive = rng.random() < positives
        follow = rng.random() < followups
        maker = _follow_up_pair if follow else _plain_pair
        maker(pool, rng, category, positive, f"p{len(stream.pairs):05d}", stream)
    if len(stream.pairs) < count:
        raise UsageError(f"{OWNER} args: only {len(stream.pairs)} of {count} pairs could be made (too few classes "
                         "with slot variants for the negatives; raise classes or positives)")
    return stream


def _request(request_id: str, text: str, meaning: Meaning, pool: Pool, parent: str | None = None) -> Request:
    return Request(request_id=request_id, prompt=text, class_id=meaning.class_id, category=meaning.category,
                   timestamp=0.0, parent=parent, response=pool.response(meaning, 0.0))


def _two_phrasings(pool: Pool, intent: Intent, rng: random.Random) -> tuple[str, str]:
    """Two different paraphrases of one class (the same one when the class has only one)."""
    templates = pool.templates(intent)
    if len(templates) < 2:
        return templates[0], templates[0]
    first, second = rng.sample(templates, 2)
    return first, second


def _variant_pair(pool: Pool, intent: Intent, rng: random.Random) -> tuple[Intent, str, str] | None:
    """A hard negative of `intent` and the two texts, phrased with the same template position."""
    variants = pool.hard_negatives(intent)
    if not variants:
        return None
    other = rng.choice(variants)
    mine, theirs = pool.templates(intent), pool.templates(other)
    position = rng.randrange(min(len(mine), len(theirs)))
    return other, mine[position], theirs[position]


def _plain_pair(pool: Pool, rng: random.Random, category: str, positive: bool, pid: str, stream: Stream) -> None:
    intent = rng.choice(pool.intents[category])
    meaning = pool.meaning(intent)
    if positive:
        first, second = _two_phrasings(pool, intent, rng)
        stream.pairs.append((_request(f"{pid}a", first, meaning, pool), _request(f"{pid}b", second, meaning, pool)))
        return
    found = _variant_pair(pool, intent, rng)
    if found is not None:
        other, first, second = found
        stream.pairs.append((_request(f"{pid}a", first, meaning, pool),
                             _request(f"{pid}b", second, pool.meaning(other), pool)))


def _follow_up_pair(pool: Pool, rng: random.Random, category: str, positive: bool, pid: str, stream: Stream) -> None:
    """The same follow-up text twice: under a paraphrase of its parent (positive) or under a slot variant of the
    parent whose follow-up means something else (the contextual trap)."""
    intent = rng.choice(pool.intents[category])
    parent = pool.meaning(intent)
    follow = pool.follow_up(parent, rng)
    if follow is None:
        return
    if positive:
        first_context, second_context = _two_phrasings(pool, intent, rng)
        second_parent, second_meaning = parent, follow.meaning
    else:
        for other in rng.sample(pool.hard_negatives(intent), len(pool.hard_negatives(intent))):
            second_parent = pool.meaning(other)
            second_meaning = pool.resolve(second_parent, follow.key, follow.fill)
            if second_meaning.class_id != follow.meaning.class_id:
                break
        else:
            return
        mine, theirs = pool.templates(intent), pool.templates(other)
        position = rng.randrange(min(len(mine), len(theirs)))
        first_context, second_context = mine[position], theirs[position]
    stream.ancestors[f"{pid}ctx-a"] = _request(f"{pid}ctx-a", first_context, parent, pool)
    stream.ancestors[f"{pid}ctx-b"] = _request(f"{pid}ctx-b", second_context, second_parent, pool)
    stream.pairs.append((_request(f"{pid}a", follow.text, follow.meaning, pool, parent=f"{pid}ctx-a"),
                         _request(f"{pid}b", follow.text, second_meaning, pool, parent=f"{pid}ctx-b")))
