"""What a semantic task hands the runner: a stream of requests, or a set of pairs, built from a request.

A request carries what a serving stack would see (prompt, category, user, time, parent request) and what only
the benchmark knows (the equivalence class and the response valid at that time). Methods receive a `Query`
(cachebench.semantic.method) that leaves the class and the response out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Protocol = Literal["stream", "pair"]
PROTOCOLS: tuple[str, ...] = ("stream", "pair")
# how a pair set is looked up (cachebench.semantic.runner): all first items inserted, then every second item
# searched against them; or each pair on its own
PAIR_PROTOCOLS: tuple[str, ...] = ("retrieval", "pairwise")


@dataclass(frozen=True)
class Request:
    """One request of a stream (or one side of a pair)."""

    request_id: str
    prompt: str
    class_id: str  # equivalence class: two requests may share a response iff their classes are equal
    category: str
    timestamp: float  # seconds on the stream's own clock (TTLs and staleness use it, never the wall clock)
    user: str = "u0"
    parent: str | None = None  # request_id of the request this one follows up (context chain)
    response: str = ""  # the correct response at `timestamp` (time-sensitive classes change it over time)


@dataclass
class Stream:
    """A workload for one protocol.

    stream: `requests` in time order; each is a lookup and, on a miss, an insert; the first `warmup` fraction
    of requests fills the cache and is left out of scores.
    pair: `pairs` of (first, second); every first item is inserted, then every second item is looked up
    (GPTCache's and MeanCache's protocol). `requests` is empty.
    """

    name: str
    protocol: Protocol
    requests: list[Request] = field(default_factory=list)
    pairs: list[tuple[Request, Request]] = field(default_factory=list)
    warmup: float = 0.0
    categories: tuple[str, ...] = ()
    # requests that a context chain needs but that are not looked up themselves (a pair file's main queries)
    ancestors: dict[str, Request] = field(default_factory=dict)

    def all_requests(self) -> list[Request]:
        """Every request whose prompt is embedded: the stream, or both sides of every pair, plus ancestors."""
        found = list(self.requests)
        for first, second in self.pairs:
            found.extend((first, second))
        found.extend(self.ancestors.values())
        return found


@dataclass(frozen=True)
class StreamRequest:
    """Everything a semantic builder may use."""

    seed: int
    args: Mapping[str, Any]  # the task YAML's args
    limit: int | None = None  # at most this many requests (stream) or pairs (pair protocol)
    data_path: str | None = None  # a local file in the real dataset's format, instead of the hub
    requests: int | None = None  # generated tasks: how many requests (pairs) to make, over the task's own size
