"""Feed a stream (or a pair set) to a semantic cache and judge every lookup by the stream's classes.

vCache's definitions (Schroeder et al. 2025, §2): a hit that serves an entry of the request's class is a true
positive, of another class a false positive; a miss whose nearest live neighbour had the request's class is a
false negative (the cache could have served it), otherwise a true negative. A hit of the right class whose stored
response is no longer the one valid at the request's time is also marked stale. The runner keeps which class
and response every entry was inserted with; the method never sees them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from cachebench.semantic.embedder import Embedder
from cachebench.semantic.method import Decision, Query, SemanticMethod
from cachebench.semantic.stream import Request, Stream

CONTEXT_DEPTH = 4  # ancestors handed to a method with each query (MeanCache checks the chain up to this depth)
FAILURES_IN_A_ROW = 3  # requests failing in a row after which the cache is taken as broken (see _attempt)


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
    embed_ms: float  # this request's share of the batched embedding
    cache_entries: int
    cache_bytes: int
    error: str | None = None


@dataclass(frozen=True)
class _Inserted:
    class_id: str
    response: str
    user: str


def judge(decision: Decision, request: Request, entries: dict[int, _Inserted]) -> tuple[str, bool]:
    """(outcome, stale) of a decision for a request."""
    if decision.hit:
        served = entries.get(decision.key) if decision.key is not None else None
        if served is not None and served.class_id == request.class_id:
            return "TP", served.response != request.response
        return "FP", False
    nearest = entries.get(decision.nearest_key) if decision.nearest_key is not None else None
    return ("FN" if nearest is not None and nearest.class_id == request.class_id else "TN"), False


class StreamRunner:
    """Runs one stream against one opened method; embeddings are computed once, in batches, up front."""

    def __init__(self, method: SemanticMethod, embedder: Embedder) -> None:
        self.method = method
        self.embedder = embedder
        self._entries: dict[int, _Inserted] = {}
        self._failures_in_a_row = 0
        self._broken: str | None = None  # the error given to every later request once the cache is taken as broken
        self._embed_ms = float("nan")

    def run(self, stream: Stream, on_result: Callable[[RequestResult], None] = lambda result: None
            ) -> list[RequestResult]:
        by_id = {request.request_id: request for request in stream.all_requests()}
        texts = list(dict.fromkeys(request.prompt for request in by_id.values()))
        vectors, embed_ms = self.embedder.encode_timed(texts)
        self._vector_of = dict(zip(texts, vectors, strict=True))
        self._by_id = by_id
        self._embed_ms = embed_ms
        if stream.protocol == "pair":
            return self._run_pairs(stream, on_result)
        return self._run_stream(stream, on_result)

    def query(self, request: Request) -> Query:
        """What the cache sees of a request: no class, no response."""
        context = []
        parent = request.parent
        while parent is not None and len(context) < CONTEXT_DEPTH:
            ancestor = self._by_id[parent]
            context.append(self._vector_of[ancestor.prompt])
            parent = ancestor.parent
        return Query(prompt=request.prompt, embedding=self._vector_of[request.prompt], category=request.category,
                     user=request.user, timestamp=request.timestamp, context=tuple(context))

    def _lookup(self, query: Query, request: Request, position: int, warmup: bool) -> RequestResult:
        start = time.perf_counter()
        decision = self.method.lookup(query)
        elapsed_ms = (time.perf_counter() - start) * 1000
        outcome, stale = judge(decision, request, self._entries)
        served = self._entries.get(decision.key) if decision.hit and decision.key is not None else None
        return RequestResult(
            request=request, position=position, warmup=warmup, decision=decision, outcome=outcome, stale=stale,
            served_class=served.class_id if served else None, served_user=served.user if served else None,
            lookup_ms=max(0.0, elapsed_ms - decision.fetch_ms), fetch_ms=decision.fetch_ms, embed_ms=self._embed_ms,
            cache_entries=0, cache_bytes=0,
        )

    def _remember(self, key: int | None, request: Request) -> None:
        if key is not None:
            self._entries[key] = _Inserted(request.class_id, request.response, request.user)

    def _finish(self, result: RequestResult) -> RequestResult:
        result.cache_entries = self.method.entries()
        result.cache_bytes = self.method.memory_bytes()
        return result

    def _failed(self, request: Request, position: int, warmup: bool, error: str) -> RequestResult:
        nan = float("nan")
        return RequestResult(
            request=request, position=position, warmup=warmup, decision=Decision(hit=False), outcome="",
            stale=False, served_class=None, served_user=None, lookup_ms=nan, fetch_ms=nan, embed_ms=self._embed_ms,
            cache_entries=self.method.entries(), cache_bytes=0, error=error,
        )

    def _attempt(self, request: Request, position: int, warmup: bool,
                 work: Callable[[], RequestResult]) -> RequestResult:
        """`work()`, or an error row when it raises. After FAILURES_IN_A_ROW failures in a row the cache is
        taken as broken (a store server gone): later requests become error rows without calling it, so a dead
        store costs no timeouts, and every planned request still has its row."""
        if self._broken is not None:
            return self._failed(request, position, warmup, self._broken)
        try:
            result = work()
        except Exception as exc:  # a store that failed mid-run: the row says so, the run goes on
            error = _one_line(exc)
            self._failures_in_a_row += 1
            if self._failures_in_a_row >= FAILURES_IN_A_ROW:
                self._broken = f"not run: the cache failed {FAILURES_IN_A_ROW} requests in a row (last: {error})"
            return self._failed(request, position, warmup, error)
        self._failures_in_a_row = 0
        return result

    def fail_all(self, stream: Stream, exc: Exception, on_result: Callable[[RequestResult], None]
                 ) -> list[RequestResult]:
        """An error row for every request the stream would look up, when the cache could not even start."""
        self._embed_ms = float("nan")
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
        for position, request in enumerate(stream.requests):

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

    def _run_pairs(self, stream: Stream, on_result: Callable[[RequestResult], None]) -> list[RequestResult]:
        """GPTCache's protocol: insert every first item, then look up every second item (no inserts)."""
        try:
            for first, _ in stream.pairs:
                query = self.query(first)
                decision = Decision(hit=False, note="insert")
                self._remember(self.method.record_miss(query, first.response, decision), first)
        except Exception as exc:  # the cache cannot be filled: no lookup would mean anything
            self._broken = f"not run: filling the cache failed ({_one_line(exc)})"
        results = []
        for position, (_, second) in enumerate(stream.pairs):

            def serve(second: Request = second, position: int = position) -> RequestResult:
                query = self.query(second)
                result = self._lookup(query, second, position, False)
                if not result.decision.hit:
                    self.method.feedback(query, second.response, result.decision)
                return self._finish(result)

            results.append(self._attempt(second, position, False, serve))
            on_result(results[-1])
        return results


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0]
