"""Where a semantic cache keeps its entries: a vector index searched per partition, and a document store.

The split is the category-aware paper's hybrid architecture: the index (and the small per-entry metadata the
method keeps) lives in process memory, the documents (prompt and response) in a store that may be external
(SQLite, Redis). A remote vector database (Chroma) plays both parts over the network, which is the
architecture the hybrid one is measured against.

Partitions keep tenants apart: a method that scopes its cache per user searches only that user's partition,
so no request can be served another user's entry, whatever the similarity.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Document:
    """What a hit fetches: the stored prompt and response, and who and what they belong to."""

    prompt: str
    response: str
    category: str
    user: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Document:
        return cls(**json.loads(text))

    def nbytes(self) -> int:
        return len(self.prompt.encode()) + len(self.response.encode()) + len(self.category) + len(self.user)


class VectorIndex(Protocol):
    """One partition's nearest-neighbour index over unit vectors (cosine similarity = inner product)."""

    def add(self, key: int, vector: np.ndarray) -> None: ...

    def search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """Up to k (key, cosine similarity) pairs, most similar first."""
        ...

    def remove(self, key: int) -> None: ...

    def __len__(self) -> int: ...

    def memory_bytes(self) -> int: ...


class PartitionedIndex(Protocol):
    """The index a method talks to: vectors grouped in named partitions, searched one partition at a time."""

    def add(self, key: int, vector: np.ndarray, partition: str) -> None: ...

    def search(self, vector: np.ndarray, partition: str, k: int) -> list[tuple[int, float]]: ...

    def remove(self, key: int, partition: str) -> None: ...

    def memory_bytes(self) -> int: ...

    def close(self) -> None: ...


class DocumentStore(Protocol):
    """Documents by entry key."""

    def put(self, key: int, document: Document) -> None: ...

    def get(self, key: int) -> Document | None: ...

    def delete(self, key: int) -> None: ...

    def stored_bytes(self) -> int: ...

    def close(self) -> None: ...


class ExactIndex:
    """Brute-force inner product over all vectors: the reference an approximate index is checked against."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._vectors = np.zeros((0, dim), dtype=np.float32)
        self._keys: list[int] = []
        self._rows: dict[int, int] = {}

    def add(self, key: int, vector: np.ndarray) -> None:
        if key in self._rows:
            self._vectors[self._rows[key]] = vector
            return
        if len(self._keys) == self._vectors.shape[0]:  # grow by doubling, not per insert
            grown = np.zeros((max(16, 2 * len(self._keys)), self.dim), dtype=np.float32)
            grown[: len(self._keys)] = self._vectors[: len(self._keys)]
            self._vectors = grown
        self._rows[key] = len(self._keys)
        self._vectors[len(self._keys)] = vector
        self._keys.append(key)

    def search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        count = len(self._keys)
        if count == 0 or k < 1:
            return []
        scores = self._vectors[:count] @ np.asarray(vector, dtype=np.float32)
        k = min(k, count)
        top = np.argpartition(-scores, k - 1)[:k] if k < count else np.arange(count)
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(self._keys[i], float(scores[i])) for i in top]

    def remove(self, key: int) -> None:
        row = self._rows.pop(key, None)
        if row is None:
            return
        last = len(self._keys) - 1
        if row != last:  # move the last vector into the hole
            moved = self._keys[last]
            self._vectors[row] = self._vectors[last]
            self._keys[row] = moved
            self._rows[moved] = row
        self._keys.pop()

    def __len__(self) -> int:
        return len(self._keys)

    def memory_bytes(self) -> int:
        return len(self._keys) * (self.dim * 4 + 8)


class LocalPartitions:
    """In-process partitions, one index each, built on first use; a lock makes add/search/remove safe to call
    from several threads."""

    def __init__(self, make_index: Callable[[], VectorIndex]) -> None:
        self._make_index = make_index
        self._indexes: dict[str, VectorIndex] = {}
        self._lock = threading.Lock()

    def add(self, key: int, vector: np.ndarray, partition: str) -> None:
        with self._lock:
            index = self._indexes.get(partition)
            if index is None:
                index = self._indexes[partition] = self._make_index()
            index.add(key, vector)

    def search(self, vector: np.ndarray, partition: str, k: int) -> list[tuple[int, float]]:
        with self._lock:
            index = self._indexes.get(partition)
            return index.search(vector, k) if index is not None else []

    def remove(self, key: int, partition: str) -> None:
        with self._lock:
            index = self._indexes.get(partition)
            if index is not None:
                index.remove(key)

    def memory_bytes(self) -> int:
        with self._lock:
            return sum(index.memory_bytes() for index in self._indexes.values())

    def close(self) -> None:
        with self._lock:
            self._indexes.clear()


class MemoryDocuments:
    """Documents in a dict: the in-memory store, and the reference for the external ones."""

    def __init__(self) -> None:
        self._documents: dict[int, Document] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, key: int, document: Document) -> None:
        with self._lock:
            old = self._documents.get(key)
            self._bytes += document.nbytes() - (old.nbytes() if old else 0)
            self._documents[key] = document

    def get(self, key: int) -> Document | None:
        return self._documents.get(key)

    def delete(self, key: int) -> None:
        with self._lock:
            old = self._documents.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes()

    def stored_bytes(self) -> int:
        return self._bytes

    def close(self) -> None:
        self._documents.clear()
