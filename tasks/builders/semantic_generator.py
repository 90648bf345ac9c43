"""semantic.stream: an offline request stream whose categories behave as the category-aware semantic caching
paper (arXiv 2510.26835) observes in production, generated from cachebench's own templates, seeded.

What it reproduces:
- code queries cluster densely: a class is (task, language), so "reverse a list in Python", "reverse a string in
  Python" and "reverse a list in JavaScript" are three classes that embed very close (they must not hit);
- conversational queries are sparse: open chit-chat and advice over unrelated topics, phrased loosely;
- repetition is a power law for code (Zipf exponent ~1.2) and near-uniform for conversation (~0.1);
- staleness differs: time-sensitive answers (prices, scores, weather) change every `period` seconds, the others
  stay valid for the whole stream unless `periods` gives them one (months-scale for code, say);
- context chains (MeanCache): a share of requests are generic follow-ups ("what about in JavaScript?", "tell me
  more") of the same user's previous request; their class derives from (parent class, follow-up intent), so one
  text under two parents is two classes. "What about in Go?" after a base code question resolves to that task in
  Go, the class a cache may rightly serve.

Users draw from the same classes (no class belongs to one user), so cross-user sharing is possible; per-user
caches (MeanCache) see only their own share of the repeats. Arrivals are a Poisson process over `duration`
seconds starting at 0. The stream is a pure function of the seed and the knobs; `--limit N` keeps its first N.

Scaling (`--requests N` or the `requests` knob): the written classes are sized for the default 2,000 requests.
A larger stream keeps their repetition realistic by growing with it: each category's class count becomes
round(written x requests / 2000) (code: its tasks, each asked in the eight languages), the new classes a long
tail of generated ones that name made-up towns, companies, products and people (semantic_tail), ranked after
the written classes on the same Zipf law; and users default to max(8, requests // 250). A category capped by
`classes` does not grow. Per-class and per-user request rates stay what they are at the default size, over the
same `duration`. Up to 2,000 requests nothing of this applies: the stream is exactly the written pool's.

Knobs (the task YAML's args):
  requests     number of requests (default 2000; --requests N overrides it; at most 10,000,000)
  duration     stream length in seconds; mean gap = duration / requests (default 3600)
  mix          {category: share} of base requests; listed categories only (default code .35, conversation .25,
               factual .2, time-sensitive .2)
  zipf         {category: exponent} of class popularity (default code 1.2, conversation 0.1, factual 0.9,
               time-sensitive 0.9)
  period       seconds between changes of a time-sensitive answer (default 300)
  periods      {category: seconds} staleness periods of other categories (default none: stable); an entry for
               time-sensitive wins over `period`
  users        number of users u0..u{n-1}, drawn uniformly per request (default max(8, requests // 250))
  followups    share of requests that follow up the same user's previous request (default 0.1)
  paraphrases  templates each class is asked with: 0 = all of them, k = a seeded subset of k (default 0)
  classes      {category: n} keep only the n first classes of the seeded ranking (default all; no tail)
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from cachebench.errors import UsageError
from cachebench.semantic.stream import Request, Stream, StreamRequest
from cachebench.tasks.builders.semantic_knobs import check_known, number, per_category, requested
from cachebench.tasks.builders.semantic_pool import Meaning, Pool
from cachebench.tasks.builders.semantic_templates import CATEGORIES

OWNER = "semantic_generator"
DEFAULT_MIX = {"code": 0.35, "conversation": 0.25, "factual": 0.2, "time-sensitive": 0.2}
DEFAULT_ZIPF = {"code": 1.2, "conversation": 0.1, "factual": 0.9, "time-sensitive": 0.9}
DEFAULT_PERIOD = 300.0
KNOBS = ("requests", "duration", "mix", "zipf", "period", "periods", "users", "followups", "paraphrases", "classes")
GENERATED = True  # --requests sizes this task (semantic_knobs.check_requests)
BASE_REQUESTS = 2000  # the stream size the written classes are sized for; larger streams grow a tail
USERS_PER_REQUESTS = 250  # default users: one per 250 requests, at least 8
MIN_GAP = 0.001  # timestamps are rounded to milliseconds and kept strictly increasing
FINE_GAP = 1e-6  # ... to microseconds when the mean gap is under FINE_BELOW (a dense stream)
FINE_BELOW = 0.01


@dataclass(frozen=True)
class StreamKnobs:
    """The generator's knobs after defaults and checks (the module docstring says what each does)."""

    requests: int
    duration: float
    mix: dict[str, float]
    zipf: dict[str, float]
    periods: dict[str, float]
    users: int
    followups: float
    paraphrases: int
    classes: dict[str, float]


def read_knobs(args: Mapping[str, Any], requests: int | None = None) -> StreamKnobs:
    """The knobs with their defaults (`requests`: --requests, over the knob); a bad value is a one-line
    UsageError naming it."""
    owner = OWNER
    count = requested(requests, args, "requests", BASE_REQUESTS, owner)
    check_known(args, KNOBS, owner)
    mix = per_category(args, "mix", DEFAULT_MIX, CATEGORIES, owner, replace=True)
    if sum(mix.values()) <= 0:
        raise UsageError(f"{owner} args: mix gives every category a share of 0")
    periods = per_category(args, "periods", {}, CATEGORIES, owner)
    periods.setdefault("time-sensitive", number(args, "period", DEFAULT_PERIOD, owner, low=0.0, strict_low=True))
    return StreamKnobs(
        requests=count,
        duration=number(args, "duration", 3600.0, owner, low=0.0, strict_low=True),
        mix=mix,
        zipf=per_category(args, "zipf", DEFAULT_ZIPF, CATEGORIES, owner),
        periods=periods,
        users=int(number(args, "users", max(8, count // USERS_PER_REQUESTS), owner, low=1, integer=True)),
        followups=number(args, "followups", 0.1, owner, low=0.0, high=0.95),
        paraphrases=int(number(args, "paraphrases", 0, owner, low=0, integer=True)),
        classes=per_category(args, "classes", {}, CATEGORIES, owner),
    )


def build_stream(request: StreamRequest) -> Stream:
    """The generated stream (request.requests of them when given), truncated to request.limit requests."""
    knobs = read_knobs(request.args, request.requests)
    requests = generate(knobs, request.seed)
    if request.limit is not None:
        requests = requests[: max(0, request.limit)]
    return Stream(name="generator", protocol="stream", requests=requests, categories=CATEGORIES)


def generate(knobs: StreamKnobs, seed: int) -> list[Request]:
    """Every request of the stream, in time order."""
    rng = random.Random(seed)
    pool = Pool(seed, knobs.zipf, knobs.periods, knobs.paraphrases, knobs.classes,
                scale=knobs.requests / BASE_REQUESTS)
    categories = [name for name in CATEGORIES if knobs.mix.get(name, 0) > 0]
    cum = list(accumulate(knobs.mix[name] for name in categories))
    mean_gap = knobs.duration / knobs.requests
    step, digits = (MIN_GAP, 3) if mean_gap >= FINE_BELOW else (FINE_GAP, 6)
    last: dict[str, tuple[str, Meaning]] = {}  # user -> their latest request id and meaning
    requests: list[Request] = []
    clock = 0.0
    for index in range(knobs.requests):
        if index:
            clock = max(round(clock + rng.expovariate(1.0 / mean_gap), digits), round(clock + step, digits))
        user = f"u{rng.randrange(knobs.users)}"
        parent, found = None, None
        if user in last and rng.random() < knobs.followups:
            parent_id, parent_meaning = last[user]
            follow = pool.follow_up(parent_meaning, rng)
            if follow is not None:
                parent, found = parent_id, (follow.text, follow.meaning)
        if found is None:
            intent = pool.draw(rng.choices(categories, cum_weights=cum)[0], rng)
            found = pool.phrase(intent, rng), pool.meaning(intent)
        text, meaning = found
        request_id = f"r{index:05d}"
        requests.append(Request(request_id=request_id, prompt=text, class_id=meaning.class_id,
                                category=meaning.category, timestamp=clock, user=user, parent=parent,
                                response=pool.response(meaning, clock)))
        last[user] = (request_id, meaning)
    return requests

