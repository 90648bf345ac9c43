"""Feed a stream (or a pair set) to a semantic cache and judge every lookup by the stream's classes.

vCache's definitions (Schroeder et al. 2025, §2), with one change that keeps recall honest: a hit that serves an
entry of the request's class is a true positive, of another class a false positive; a miss is a false negative
when the cache held, in the request's partition, a live entry of the request's class whose response was still
the valid one (a correct hit was there to be had), otherwise a true negative. vCache asks only whether the
nearest neighbour had the request's class; a miss whose nearest neighbour belonged to another class while a
right entry sat further away then counts as TN and drops out of recall's denominator, inflating recall. A hit
of the right class whose stored response is no longer valid is also marked stale. The runner keeps which class
and response every entry was inserted with; the method never sees them.

Pair sets run under one of two protocols (PAIR_PROTOCOLS): `retrieval` inserts every first item, then looks up
every second item against all of them (GPTCache's benchmark, MeanCache); `pairwise` scores each pair on its own
(paraphrase classification as QQP and PAWS results are reported): a cache holding only the pair's first item
looks up its second, and the first item is evicted before the next pair.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cachebench.semantic.embedder import Embedder
from cachebench.semantic.method import Decision, Query, SemanticMethod
from cachebench.semantic.request_vectors import RequestVectors
from cachebench.semantic.stream import Request, Stream

CONTEXT_DEPTH = 4  # ancestors handed to a method with each query (MeanCache checks the chain up to this depth)
FAILURES_IN_A_ROW = 3  # requests failing in a row after which the cache is taken as broken (see _attempt)


def row_mode(stream: Stream, pair_protocol: str) -> str:
    """The `mode` rows record: stream, or pair-<protocol> (the two pair protocols are different cells)."""
    return "stream" if stream.protocol == "stream" else f"pair-{pair_protocol}"


@dataclass
class RequestResult:
    """One looked-up request, judged and timed."""

    request: Request
    position: int  # index in the stream (or in the queried half of a pair set)
    warmup: bool
    decision: Decision
    outcome: str  # TP, FP, FN or TN
    stale: bool
    served_class: str | None
    served_user: str | None
    lookup_ms: float  # the cache's own work: index search and decision, the document fetch excluded
    fetch_ms: float  # the document fetch of a hit
    embed_ms: float  # the embedding time charged to this request (see request_vectors)
    cache_entries: int
    cache_bytes: int
    error: str | None = None


@dataclass(frozen=True)
class _Inserted:
    class_id: str
    response: str
    user: str


def judge(decision: Decision, request: Request, entries: dict[int, _Inserted], servable: bool) -> tuple[str, bool]:
    """(outcome, stale) of a decision for a request; `servable`: the cache held a right entry for it."""
    if decision.hit:
        served = entries.get(decision.key) if decision.key is not None else None
        if served is not None and served.class_id == request.class_id:
            return "TP", served.response != request.response
        return "FP", False
    return ("FN" if servable else "TN"), False


class StreamRunner:
    """Runs one stream against one opened method, embedding requests as `embedding` says (request_vectors)."""

    def __init__(self, method: SemanticMethod, embedder: Embedder, embedding: str = "online",
                 embed_batch: int = 1) -> None:
        self.method = method
        mode = embedding if method.uses_embeddings else "none"
        self.vectors = RequestVectors(embedder, mode, embed_batch)
        self._entries: dict[int, _Inserted] = {}
        self._by_class: dict[str, list[int]] = {}
        self._failures_in_a_row = 0
        self._broken: str | None = None  # the error given to every later request once the cache is taken as broken

    def run(self, stream: Stream, on_result: Callable[[RequestResult], None] = lambda result: None,
            pair_protocol: str = "retrieval") -> list[RequestResult]:
        self._by_id = {request.request_id: request for request in stream.all_requests()}
        self.vectors.prepare(stream)
        if stream.protocol == "pair":
            if pair_protocol == "pairwise":
                return self._run_pairwise(stream, on_result)
            return self._run_retrieval(stream, on_result)
        return self._run_stream(stream, on_result)

    def query(self, request: Request) -> Query:
        """What the cache sees of a request: no class, no response."""
        context = []
        parent = request.parent
        while parent is not None and len(context) < CONTEXT_DEPTH:
            ancestor = self._by_id[parent]
            vector = self.vectors.vector(ancestor)
            if vector is None:
                break
            context.append(vector)
            parent = ancestor.parent
        return Query(prompt=request.prompt, embedding=self.vectors.vector(request), category=request.category,
                     user=request.user, timestamp=request.timestamp, context=tuple(context))

    def servable(self, query: Query, request: Request) -> bool:
        """Whether the cache holds, in the query's partition, a live entry of the request's class whose response
        is the one valid now: a miss then lost a correct hit (FN). Entries the method evicted are forgotten."""
        keys = self._by_class.get(request.class_id)
        if not keys:
            return False
        partition = self.method.partition_for(query)
        found = False
        alive = []
        for key in keys:
            meta = self.method.meta.get(key)
            if meta is None:
                continue
            alive.append(key)
            if (meta.partition == partition and (meta.expires is None or query.timestamp <= meta.expires)
                    and self._entries[key].response == request.response):
                found = True
        self._by_class[request.class_id] = alive
        return found

    def _lookup(self, query: Query, request: Request, position: int, warmup: bool) -> RequestResult:
        start = time.perf_counter()
        decision = self.method.lookup(query)
        elapsed_ms = (time.perf_counter() - start) * 1000
        servable = not decision.hit and self.servable(query, request)
        outcome, stale = judge(decision, request, self._entries, servable)
        served = self._entries.get(decision.key) if decision.hit and decision.key is not None else None
        return RequestResult(
            request=request, position=position, warmup=warmup, decision=decision, outcome=outcome, stale=stale,
            served_class=served.class_id if served else None, served_user=served.user if served else None,
            lookup_ms=max(0.0, elapsed_ms - decision.fetch_ms), fetch_ms=decision.fetch_ms, embed_ms=float("nan"),
            cache_entries=0, cache_bytes=0,
        )

    def _remember(self, key: int | None, request: Request) -> None:
        if key is not None:
            self._entries[key] = _Inserted(request.class_id, request.response, request.user)
            self._by_class.setdefault(request.class_id, []).append(key)

    def _finish(self, result: RequestResult) -> RequestResult:
        result.cache_entries = self.method.entries()
        result.cache_bytes = self.method.memory_bytes()
        return result

    def _failed(self, request: Request, position: int, warmup: bool, error: str,
                embed_ms: float = float("nan")) -> RequestResult:
        nan = float("nan")
        return RequestResult(
            request=request, position=position, warmup=warmup, decision=Decision(hit=False), outcome="",
            stale=False, served_class=None, served_user=None, lookup_ms=nan, fetch_ms=nan, embed_ms=embed_ms,
            cache_entries=self.method.entries(), cache_bytes=0, error=error,
        )

    def _attempt(self, request: Request, position: int, warmup: bool,
                 work: Callable[[], RequestResult]) -> RequestResult:
        """`work()`, or an error row when it raises. After FAILURES_IN_A_ROW failures in a row the cache is
        taken as broken (a store server gone): later requests become error rows without calling it, so a dead
        store costs no timeouts, and every planned request still has its row. The request's embedding time is
        charged either way."""
        if self._broken is not None:
            return self._failed(request, position, warmup, self._broken, self.vectors.done(request))
        try:
            result = work()
        except Exception as exc:  # a store that failed mid-run: the row says so, the run goes on
            error = _one_line(exc)
            self._failures_in_a_row += 1
            if self._failures_in_a_row >= FAILURES_IN_A_ROW:
                self._broken = f"not run: the cache failed {FAILURES_IN_A_ROW} requests in a row (last: {error})"
            return self._failed(request, position, warmup, error, self.vectors.done(request))
        self._failures_in_a_row = 0
        result.embed_ms = self.vectors.done(request)
        return result

    def fail_all(self, stream: Stream, exc: Exception, on_result: Callable[[RequestResult], None]
                 ) -> list[RequestResult]:
        """An error row for every request the stream would look up, when the cache could not even start."""
        error = f"not run: {_one_line(exc)}"
        looked_up = stream.requests or [second for _, second in stream.pairs]
        warm = int(len(stream.requests) * stream.warmup)
        results = []
        for position, request in enumerate(looked_up):
            results.append(self._failed(request, position, position < warm, error))
            on_result(results[-1])
        return results

    def _run_stream(self, stream: Stream, on_result: Callable[[RequestResult], None]) -> list[RequestResult]:
        """Online: lookup, then on a miss the LLM's response (the stream's) is handed to the cache."""
        warm = int(len(stream.requests) * stream.warmup)
        results = []
        for position, request in self.vectors.batches(stream.requests):

            def serve(request: Request = request, position: int = position) -> RequestResult:
                query = self.query(request)
                result = self._lookup(query, request, position, position < warm)
                if not result.decision.hit:
                    key = self.method.record_miss(query, request.response, result.decision)
                    self._remember(key, request)
                return self._finish(result)

            results.append(self._attempt(request, position, position < warm, serve))
            on_result(results[-1])
        return results

    def _insert(self, first: Request) -> int | None:
        """A pair's first item into the cache, as an LLM answer to it would be."""
        key = self.method.record_miss(self.query(first), first.response, Decision(hit=False, note="insert"))
        self._remember(key, first)
        return key

    def _run_retrieval(self, stream: Stream, on_result: Callable[[RequestResult], None]) -> list[RequestResult]:
        """GPTCache's protocol: insert every first item, then look up every second item (no inserts)."""
        firsts = [first for first, _ in stream.pairs]
        try:
            for _, first in self.vectors.batches(firsts):
                self._insert(first)
                self.vectors.done(first)
        except Exception as exc:  # the cache cannot be filled: no lookup would mean anything
            self._broken = f"not run: filling the cache failed ({_one_line(exc)})"
        return self._look_up_seconds(stream.pairs, on_result, None, lambda key: None)

    def _run_pairwise(self, stream: Stream, on_result: Callable[[RequestResult], None]) -> list[RequestResult]:
        """Each pair on its own: the cache holds only the first item while the second is looked up."""
        return self._look_up_seconds(stream.pairs, on_result, self._insert, self._evict)

    def _evict(self, key: int | None) -> None:
        if key is not None:
            self.method.evict(key)

    def _look_up_seconds(self, pairs: list[tuple[Request, Request]], on_result: Callable[[RequestResult], None],
                         before: Callable[[Request], int | None] | None, after: Callable[[int | None], None]
                         ) -> list[RequestResult]:
        """Look up every second item; `before` (None: nothing) runs on the pair's first item (pairwise: insert it)
        and `after` on what it returned (pairwise: evict it), inside the request's attempt."""
        results = []
        for position, (first, second) in self._pair_batches(pairs, with_firsts=before is not None):

            def serve(first: Request = first, second: Request = second, position: int = position
                      ) -> RequestResult:
                key = before(first) if before is not None else None
                try:
                    query = self.query(second)
                    result = self._lookup(query, second, position, False)
                    if not result.decision.hit:
                        self.method.feedback(query, second.response, result.decision)
                    return self._finish(result)
                finally:
                    after(key)

            results.append(self._attempt(second, position, False, serve))
            on_result(results[-1])
        return results

    def _pair_batches(self, pairs: list[tuple[Request, Request]], with_firsts: bool
                      ) -> Iterable[tuple[int, tuple[Request, Request]]]:
        """(position, pair), embedding each micro-batch of pairs as the runner reaches it: the second items, and
        the first items too when they are inserted now (pairwise)."""
        size = self.vectors.embed_batch
        for start in range(0, len(pairs), size):
            chunk = pairs[start:start + size]
            self.vectors.arrive([request for pair in chunk for request in (pair if with_firsts else pair[1:])])
            for offset, pair in enumerate(chunk):
                yield start + offset, pair
                self.vectors.done(pair[0])


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0]
