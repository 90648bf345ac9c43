"""Open the index and document store a method's parameters name."""

from __future__ import annotations

from typing import Any

from cachebench.errors import UsageError
from cachebench.semantic.storage import DocumentStore, ExactIndex, LocalPartitions, MemoryDocuments, PartitionedIndex


def open_storage(params: Any, dim: int, namespace: str) -> tuple[PartitionedIndex, DocumentStore]:
    """(index, documents) for `params.index` and `params.store`."""
    if params.index == "exact" and params.store == "memory":
        return LocalPartitions(lambda: ExactIndex(dim)), MemoryDocuments()
    raise UsageError(f"index={params.index} store={params.store}: not available yet")
