"""Open the index and document store a method's parameters name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cachebench.errors import UsageError
from cachebench.semantic.storage import (
    DocumentStore,
    ExactIndex,
    LocalPartitions,
    MemoryDocuments,
    PartitionedIndex,
    VectorIndex,
)


def _index_factory(params: Any, dim: int) -> Callable[[], VectorIndex]:
    if params.index == "exact":
        return lambda: ExactIndex(dim)
    from cachebench.semantic.indexes import FaissIndex, HnswIndex

    kind = {"hnsw": HnswIndex, "faiss": FaissIndex}.get(params.index)
    if kind is None:
        raise UsageError(f"index={params.index}: expected hnsw, faiss or exact")
    kind(dim, params.hnsw_m, params.hnsw_ef_construction, params.hnsw_ef)  # fail now, not at the first insert
    return lambda: kind(dim, params.hnsw_m, params.hnsw_ef_construction, params.hnsw_ef)


def _documents(params: Any, namespace: str) -> DocumentStore:
    if params.store == "memory":
        return MemoryDocuments()
    if params.store == "sqlite":
        from cachebench.semantic.docstores import SqliteDocuments

        return SqliteDocuments(params.sqlite_path or None, namespace)
    if params.store == "redis":
        from cachebench.semantic.docstores import RedisDocuments

        return RedisDocuments(params.redis_url, namespace)
    raise UsageError(f"store={params.store}: expected sqlite, memory, redis or chroma")


def open_storage(params: Any, dim: int, namespace: str) -> tuple[PartitionedIndex, DocumentStore]:
    """(index, documents) for `params.index` and `params.store`.

    index=hnsw|faiss|exact is an in-process index per partition beside the document store (the hybrid design).
    store=chroma is the remote vector database: one server collection is both index and store, searched with
    the server's own HNSW (hnsw_m, hnsw_ef_construction, hnsw_ef apply), so only index=hnsw goes with it; faiss
    or exact would silently measure something else, and are refused.
    """
    if params.store == "chroma":
        if params.index != "hnsw":
            raise UsageError(f"index={params.index} with store=chroma: the Chroma server searches with its own "
                             "HNSW index; use index=hnsw (the default)")
        from cachebench.semantic.chroma_store import ChromaStore

        store = ChromaStore(params.chroma_url, namespace, dim, params.hnsw_m, params.hnsw_ef_construction,
                            params.hnsw_ef)
        return store, store
    make_index = _index_factory(params, dim)
    return LocalPartitions(make_index), _documents(params, namespace)
