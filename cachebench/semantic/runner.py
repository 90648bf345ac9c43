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

    def _failed(self, request: Request, position: int, warmup: bool, exc: Exception) -> RequestResult:
        nan = float("nan")
        return RequestResult(
            request=request, position=position, warmup=warmup, decision=Decision(hit=False), outcome="",
            stale=False, served_class=None, served_user=None, lookup_ms=nan, fetch_ms=nan, embed_ms=self._embed_ms,
            cache_entries=self.method.entries(), cache_bytes=0,
            error=f"{type(exc).__name__}: {exc}".splitlines()[0],
        )

    def _run_stream(self, stream: Stream, on_result: Callable[[RequestResult], None]) -> list[RequestResult]:
        """Online: lookup, then on a miss the LLM's response (the stream's) is handed to the cache."""
        warm = int(len(stream.requests) * stream.warmup)
        results = []
        for position, request in enumerate(stream.requests):
            try:
                query = self.query(request)
                result = self._lookup(query, request, position, position < warm)
                if not result.decision.hit:
                    key = self.method.record_miss(query, request.response, result.decision)
                    self._remember(key, request)
                result = self._finish(result)
            except Exception as exc:  # a store that failed mid-run: the row says so, the run goes on
                result = self._failed(request, position, position < warm, exc)
            results.append(result)
            on_result(result)
        return results

    def _run_pairs(self, stream: Stream, on_result: Callable[[RequestResult], None]) -> list[RequestResult]:
        """GPTCache's protocol: insert every first item, then look up every second item (no inserts)."""
        for first, _ in stream.pairs:
            query = self.query(first)
            self._remember(self.method.record_miss(query, first.response, Decision(hit=False, note="insert")), first)
        results = []
        for position, (_, second) in enumerate(stream.pairs):
            try:
                query = self.query(second)
                result = self._lookup(query, second, position, False)
                if not result.decision.hit:
                    self.method.feedback(query, second.response, result.decision)
                result = self._finish(result)
            except Exception as exc:
                result = self._failed(second, position, False, exc)
            results.append(result)
            on_result(result)
        return results

