"""The interface every semantic-cache method implements, and the bookkeeping they share.

The runner hands a method a `Query` (what a serving stack sees: prompt, its embedding, category, user, the
stream's clock, the embeddings of the parent requests) and asks for a `Decision`. On a miss the runner "calls
the LLM" (the stream's response valid at that time) and hands the response to `record_miss`, which inserts it
or, for a learning cache such as vCache, also learns from it. The equivalence class never reaches a method.

Entries live in a partitioned vector index and a document store (cachebench.semantic.storage); the small
metadata a decision needs (partition, category, owner, expiry) stays in process memory beside the index, as in
the category-aware paper's hybrid design, so a lookup touches the document store only on a hit.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

from cachebench.params import param
from cachebench.semantic.storage import Document, DocumentStore, PartitionedIndex


@dataclass(frozen=True)
class SemanticParams:
    """Storage parameters every semantic method takes, so methods compare at equal storage."""

    index: Literal["hnsw", "faiss", "exact"] = param(
        "hnsw", "vector index: hnswlib HNSW, faiss HNSW, or exact brute force (the reference)")
    store: Literal["sqlite", "memory", "redis", "chroma"] = param(
        "sqlite", "document store beside the in-memory index (sqlite, memory, redis server), or chroma: a remote "
                  "vector-DB server holding vectors and documents", infrastructure=True)
    scope: Literal["global", "user"] = param("global", "user: one partition per user; no user sees another's")
    candidates: int = param(4, "nearest neighbours fetched per lookup (expired ones are skipped)", low=1)
    hnsw_m: int = param(16, "HNSW graph degree M", low=2)
    hnsw_ef_construction: int = param(200, "HNSW build-time candidate list", low=8)
    hnsw_ef: int = param(64, "HNSW search-time candidate list", low=1)
    sqlite_path: str = param("", "SQLite file for store=sqlite (default: a temporary file removed at the end)",
                              infrastructure=True)
    redis_url: str = param("redis://127.0.0.1:6379/0", "Redis server for store=redis", infrastructure=True)
    chroma_url: str = param("http://127.0.0.1:8000", "Chroma server for store=chroma", infrastructure=True)


def partition_key(*parts: str) -> str:
    """The name of the partition made of `parts` (scope, user, category): JSON of the list, so two different part
    lists never give the same name, whatever characters a user id or category holds."""
    return json.dumps(list(parts), ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class Query:
    """A request as the cache sees it."""

    prompt: str
    embedding: np.ndarray | None  # unit vector; None for a method that keys by text alone (uses_embeddings False)
    category: str
    user: str
    timestamp: float  # the stream's clock, seconds
    context: tuple[np.ndarray, ...] = ()  # embeddings of the parent, grandparent, ... (nearest ancestor first)


@dataclass
class EntryMeta:
    """What a method keeps in memory about one entry."""

    key: int
    partition: str
    category: str
    user: str
    created: float
    expires: float | None  # stream time after which the entry is not served; None: never
    context: tuple[np.ndarray, ...] = ()  # the inserting request's ancestors (context chains)
    extra: dict[str, Any] = field(default_factory=dict)  # method-specific state (e.g. vCache's observations)
    last_used: float = 0.0


@dataclass
class Decision:
    """A lookup's outcome as the method saw it."""

    hit: bool
    key: int | None = None  # the served entry on a hit
    response: str | None = None
    nearest_key: int | None = None  # the nearest live neighbour considered (scoring asks if it was right)
    similarity: float | None = None  # its similarity
    fetch_ms: float = 0.0  # time spent fetching the served document (part of the lookup, reported apart)
    note: str = ""  # why, in a word or two (e.g. "explore", "context-mismatch")
    state: Any = None  # method-private, handed back to record_miss


class SemanticMethod:
    """Base class: storage, partitions, TTL expiry and insertion; subclasses decide what counts as a hit."""

    name: ClassVar[str]
    summary: ClassVar[str]
    track: ClassVar[str] = "semantic"
    Params: ClassVar[type] = SemanticParams
    # False for a method that decides by text alone: the runner then never embeds a request for it (no embedding
    # cost in its rows), its entries hold no vector, and its queries carry none
    uses_embeddings: ClassVar[bool] = True

    def __init__(self, params: Any) -> None:
        self.params = params
        self.index: PartitionedIndex | None = None
        self.documents: DocumentStore | None = None
        self.meta: dict[int, EntryMeta] = {}
        self._keys = itertools.count()
        self._lock = threading.RLock()

    # -- life cycle -------------------------------------------------------------------------------------------
    def open(self, dim: int, namespace: str) -> None:
        """Open the index and document store for vectors of `dim`; `namespace` keeps runs apart on shared
        servers. Raises UsageError when a server cannot be reached."""
        from cachebench.semantic.backends import open_storage

        self.index, self.documents = open_storage(self.params, dim, namespace)

    def close(self) -> None:
        for part in (self.index, self.documents):
            if part is not None:
                part.close()

    # -- what subclasses implement ------------------------------------------------------------------------------
    def lookup(self, query: Query) -> Decision:
        raise NotImplementedError

    def record_miss(self, query: Query, response: str, decision: Decision) -> int | None:
        """The LLM answered a missed query; by default the answer is inserted. Returns the new entry's key."""
        return self.insert(query, response)

    def feedback(self, query: Query, response: str, decision: Decision) -> None:
        """The LLM answered a missed query that is not to be inserted (the pair protocol's queries): a learning
        cache may still learn from it. By default nothing happens."""

    # -- what a run tells its reader ------------------------------------------------------------------------------
    def protocol_warning(self, protocol: str) -> str | None:
        """One line, said before a run under `protocol` ("stream", "pair-retrieval" or "pair-pairwise"), when the
        method cannot show what it does there (so a near-zero hit rate is not taken for its quality); None when it
        can."""
        return None

    def run_warnings(self) -> list[str]:
        """One line per thing the method noticed during the run that changes how its rows read (e.g. a category
        it had no policy for); read before the method is re-initialised for the next task."""
        return []

    # -- shared helpers -----------------------------------------------------------------------------------------
    def partition_parts(self, query: Query) -> tuple[str, ...]:
        """What separates the query's partition from others: its user under scope=user (methods add more, e.g.
        the category)."""
        return ("user", query.user) if self.params.scope == "user" else ("all",)

    def partition_for(self, query: Query) -> str:
        return partition_key(*self.partition_parts(query))

    def ttl_for(self, query: Query) -> float | None:
        """Seconds an entry inserted for this query stays servable; None: forever."""
        return None

    def insert(self, query: Query, response: str, partition: str | None = None) -> int:
        assert self.index is not None and self.documents is not None, "open() first"
        partition = partition or self.partition_for(query)
        ttl = self.ttl_for(query)
        with self._lock:
            key = next(self._keys)
            self.meta[key] = EntryMeta(
                key=key, partition=partition, category=query.category, user=query.user, created=query.timestamp,
                expires=None if ttl is None else query.timestamp + ttl, context=query.context,
                last_used=query.timestamp,
            )
        self.documents.put(key, Document(query.prompt, response, query.category, query.user))
        if query.embedding is not None:
            self.index.add(key, query.embedding, partition)
        return key

    def evict(self, key: int) -> None:
        with self._lock:
            meta = self.meta.pop(key, None)
        if meta is None:
            return
        assert self.index is not None and self.documents is not None
        self.index.remove(key, meta.partition)
        self.documents.delete(key)

    def neighbours(self, query: Query, partition: str | None = None, k: int | None = None
                   ) -> list[tuple[EntryMeta, float]]:
        """Live nearest entries of the query's partition, most similar first; expired ones met on the way are
        evicted (lazily, by the stream's clock)."""
        assert self.index is not None
        if query.embedding is None:
            return []
        found = self.index.search(query.embedding, partition or self.partition_for(query), k or self.params.candidates)
        alive = []
        for key, similarity in found:
            meta = self.meta.get(key)
            if meta is None:
                continue
            if meta.expires is not None and query.timestamp > meta.expires:
                self.evict(key)
                continue
            alive.append((meta, similarity))
        return alive

    def serve(self, meta: EntryMeta, similarity: float, query: Query) -> Decision:
        """A hit on `meta`: fetch its document (timed) and return it. An entry of another partition is never
        served, whichever path found it (isolation checked at the point of serving, not only by the search)."""
        assert self.documents is not None
        if meta.partition != self.partition_for(query):
            return Decision(hit=False, nearest_key=None, similarity=None, note="other-partition")
        start = time.perf_counter()
        document = self.documents.get(meta.key)
        fetch_ms = (time.perf_counter() - start) * 1000
        if document is None:  # vanished from the store (evicted by another thread): a miss
            return Decision(hit=False, nearest_key=meta.key, similarity=similarity, fetch_ms=fetch_ms, note="gone")
        meta.last_used = query.timestamp
        return Decision(hit=True, key=meta.key, response=document.response, nearest_key=meta.key,
                        similarity=similarity, fetch_ms=fetch_ms)

    def miss(self, nearest: tuple[EntryMeta, float] | None, note: str = "", state: Any = None) -> Decision:
        if nearest is None:
            return Decision(hit=False, note=note or "empty", state=state)
        return Decision(hit=False, nearest_key=nearest[0].key, similarity=nearest[1], note=note, state=state)

    def entries(self) -> int:
        return len(self.meta)

    def memory_bytes(self) -> int:
        """Index, documents and in-memory metadata (an estimate of the per-entry record: ~200 bytes)."""
        assert self.index is not None and self.documents is not None
        return self.index.memory_bytes() + self.documents.stored_bytes() + 200 * len(self.meta)
