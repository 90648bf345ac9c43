"""A Chroma server as both index and document store: the remote vector database the category-aware paper
measures its hybrid design against.

Every lookup is an HTTP round trip to the server (an HNSW query), every hit another (the document), so the cost
measured here is the architecture's, not a simulation of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from cachebench.errors import UsageError
from cachebench.semantic.indexes import hnsw_layout_bytes
from cachebench.semantic.storage import Document

_START_HINT = "start one with `chroma run --host 127.0.0.1 --port N --path DIR` or pass --param chroma_url=..."


def collection_name(namespace: str) -> str:
    """A valid Chroma collection name (3-512 of [a-zA-Z0-9._-], alphanumeric at both ends) unique per
    namespace: the readable part is sanitised and cut, a hash of the full namespace keeps distinct ones apart."""
    readable = re.sub(r"[^a-zA-Z0-9_-]+", "-", namespace)[:200]
    digest = hashlib.blake2b(namespace.encode(), digest_size=4).hexdigest()
    return f"cachebench-{readable}-{digest}"


def _address(url: str) -> tuple[str, int, bool]:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"chroma_url {url!r} is not an http(s)://host:port URL")
    ssl = parts.scheme == "https"
    return parts.hostname, parts.port or (443 if ssl else 8000), ssl


class ChromaStore:
    """One collection per partition (cosine space, HNSW M / ef from the run's parameters), created on its first
    entry; each entry is one record holding vector and document.

    Partitions are collections rather than a `where` filter on one collection: Chroma evaluates a filter against
    its metadata store on every query, which measured ~20 ms at 10,000 records on loopback against ~2 ms
    unfiltered, and a deployment that isolates tenants or categories in Chroma gives each its own collection.

    `put` keeps a document pending until `add` sends it with its vector in one call (a method puts the
    document first, then adds the vector), so an insert is one round trip. A partition with no records is
    answered here, without a round trip.
    """

    def __init__(self, url: str, namespace: str, dim: int, m: int = 16, ef_construction: int = 200,
                 ef: int = 64) -> None:
        try:
            import chromadb
            from chromadb.config import Settings
        except ImportError:
            raise UsageError("chromadb is not installed: pip install 'cachebench[semantic]'") from None
        self.url, self.dim, self.m, self.namespace = url, dim, m, namespace
        self._hnsw = {"space": "cosine", "max_neighbors": m, "ef_construction": ef_construction, "ef_search": ef}
        host, port, ssl = _address(url)
        try:
            self._client = chromadb.HttpClient(host=host, port=port, ssl=ssl,
                                               settings=Settings(anonymized_telemetry=False))
            self._client.heartbeat()
        except Exception as error:  # ValueError, httpx's or Chroma's own errors, by how it fails
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise UsageError(f"cannot reach Chroma at {url} ({reason}): {_START_HINT}") from None
        self._lock = threading.Lock()
        self._collections: dict[str, Any] = {}  # partition → its collection
        self._pending: dict[int, Document] = {}
        self._sizes: dict[int, int] = {}  # document bytes of each record on the server
        self._bytes = 0  # their sum
        self._live: dict[int, str] = {}  # key → partition of each record holding a vector
        self._counts: dict[str, int] = {}  # live records per partition
        self._closed = False

    def _collection(self, partition: str) -> Any:
        """The partition's collection, created on first use (a namespace is unique per run: anything under its
        name is a crashed run's leftover and is cleared first)."""
        with self._lock:
            found = self._collections.get(partition)
        if found is not None:
            return found
        name = collection_name(f"{self.namespace}-{partition}")
        with contextlib.suppress(Exception):  # not found: NotFoundError (ValueError in older clients)
            self._client.delete_collection(name)
        created = self._client.create_collection(name, embedding_function=None, configuration={"hnsw": self._hnsw})
        with self._lock:
            return self._collections.setdefault(partition, created)

    # -- PartitionedIndex -------------------------------------------------------------------------------------
    def add(self, key: int, vector: np.ndarray, partition: str) -> None:
        with self._lock:
            document = self._pending.pop(key, None)
        record: dict[str, Any] = {"ids": [str(key)], "embeddings": np.asarray(vector, np.float32).reshape(1, -1),
                                  "metadatas": [{"partition": partition}]}
        if document is not None:
            record["documents"] = [document.to_json()]
        self._collection(partition).upsert(**record)  # upsert: a removed key may come back
        with self._lock:
            self._forget(key)
            self._live[key] = partition
            self._counts[partition] = self._counts.get(partition, 0) + 1
            if document is not None:
                self._resize(key, len(record["documents"][0].encode()))

    def search(self, vector: np.ndarray, partition: str, k: int) -> list[tuple[int, float]]:
        with self._lock:
            k = min(k, self._counts.get(partition, 0))
        if k < 1:
            return []
        result = self._collection(partition).query(query_embeddings=np.asarray(vector, np.float32).reshape(1, -1),
                                                   n_results=k, include=["distances"])
        return [(int(key), 1.0 - float(distance))
                for key, distance in zip(result["ids"][0], result["distances"][0], strict=True)]

    def remove(self, key: int, partition: str) -> None:
        """Deletes the whole record: vector and document go together on the server."""
        self._drop(key)

    def memory_bytes(self) -> int:
        """What the server's HNSW index holds for these entries (hnswlib's layout, `hnsw_layout_bytes`): memory
        of the server process, not of this one."""
        count = len(self._live)
        return hnsw_layout_bytes(count, count, self.dim, self.m) if count else 0

    # -- DocumentStore ----------------------------------------------------------------------------------------
    def put(self, key: int, document: Document) -> None:
        with self._lock:
            partition = self._live.get(key)
            if partition is None:
                self._pending[key] = document
                return
        # Chroma will not update a document alone without an embedding function: resend the stored vector
        collection = self._collection(partition)
        stored = collection.get(ids=[str(key)], include=["embeddings", "metadatas"])
        text = document.to_json()
        collection.upsert(ids=[str(key)], embeddings=np.asarray(stored["embeddings"], np.float32),
                          metadatas=stored["metadatas"], documents=[text])
        with self._lock:
            self._resize(key, len(text.encode()))

    def get(self, key: int) -> Document | None:
        with self._lock:
            pending = self._pending.get(key)
            partition = self._live.get(key)
        if pending is not None:
            return pending
        if partition is None:
            return None
        result = self._collection(partition).get(ids=[str(key)], include=["documents"])
        documents = result["documents"] or []
        return Document.from_json(documents[0]) if documents and documents[0] is not None else None

    def delete(self, key: int) -> None:
        self._drop(key)

    def stored_bytes(self) -> int:
        with self._lock:
            return self._bytes + sum(len(d.to_json().encode()) for d in self._pending.values())  # few pending

    def _drop(self, key: int) -> None:
        with self._lock:
            self._pending.pop(key, None)
            self._resize(key, 0)
            partition = self._live.get(key)
            if partition is None:
                return  # already gone (a method removes the vector, then deletes the document): no round trip
            self._forget(key)
        self._collection(partition).delete(ids=[str(key)])

    def _resize(self, key: int, size: int) -> None:
        """Record a record's document bytes; 0 drops it (under the lock)."""
        self._bytes += size - self._sizes.pop(key, 0)
        if size:
            self._sizes[key] = size

    def _forget(self, key: int) -> None:
        """Drop a live record from the partition counts (under the lock)."""
        partition = self._live.pop(key, None)
        if partition is not None:
            self._counts[partition] -= 1
            if not self._counts[partition]:
                del self._counts[partition]

    def close(self) -> None:
        """Delete the collections; the method closes this object twice (as index and as store), once acts."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            for collection in self._collections.values():
                self._client.delete_collection(collection.name)
        finally:
            self._client.close()
