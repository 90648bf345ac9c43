"""Approximate nearest-neighbour indexes for one partition: HNSW from hnswlib and from faiss.

These are the in-memory indexes of the category-aware paper's hybrid design. Both take unit float32 vectors and
report cosine similarity (inner product). They are not thread-safe on their own (hnswlib's resize and faiss's
rebuild replace memory a concurrent search would read); `LocalPartitions` serialises calls to them.

`memory_bytes()` follows each library's layout, so it can be compared with the remote store and the exact
index at equal entries; the formulas are in the methods' docstrings and the test checks them against the
libraries' own serialized sizes.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from cachebench.errors import UsageError

# hnswlib allocates 65,536 std::mutex (40 bytes each on Linux x86-64) per index for label operations: a fixed
# 2.6 MB that dominates small indexes (one per user partition adds up).
_HNSWLIB_LABEL_LOCKS = 65536 * 40
_MUTEX = 40
_INSTALL_HINT = "pip install 'cachebench[semantic]'"


def _require(module: str) -> Any:
    """Import an optional library, or say in one line how to install it."""
    try:
        return __import__(module)
    except ImportError:
        raise UsageError(f"{module} is not installed: {_INSTALL_HINT}") from None


def _row(vector: np.ndarray, dim: int) -> np.ndarray:
    row = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, -1)
    if row.shape[1] != dim:
        raise ValueError(f"vector of dimension {row.shape[1]}, index expects {dim}")
    return row


def hnsw_layout_bytes(count: int, capacity: int, dim: int, m: int) -> int:
    """Bytes hnswlib holds for `count` vectors in an index allocated for `capacity`.

    Per element: the vector (4·dim), level-0 links (2M·4 + 4 for the count), the label (8), its pointer to
    upper-level links (8), and the label→slot hash map entry (~40: a 24-byte node, malloc's header, a bucket).
    Upper levels: a node reaches level l with probability M^-l, so the expected number of upper levels is
    1/(M-1), each M·4 + 4 bytes. Per slot of capacity: the level (4), a link-list mutex (40) and the visited
    list (2); the level-0 block is allocated for the whole capacity but pages never written stay unmapped, so
    only used slots count. Fixed: the label-lock table (2.6 MB). Measured RSS matches this when capacity was
    set up front; after a doubling resize the allocator may keep the old block, so RSS can read up to ~1.7x.
    """
    per_element = dim * 4 + (2 * m * 4 + 4) + 8 + 8 + 40 + (m * 4 + 4) / max(m - 1, 1)
    return int(count * per_element + capacity * (4 + _MUTEX + 2) + _HNSWLIB_LABEL_LOCKS)


def _dict_bytes(mapping: dict[int, int]) -> int:
    """A Python dict of int→int: its table plus two int objects per entry."""
    return sys.getsizeof(mapping) + 2 * 28 * len(mapping)


class HnswIndex:
    """hnswlib HNSW over inner product; removal marks a slot deleted and the next new key reuses it."""

    def __init__(self, dim: int, m: int = 16, ef_construction: int = 200, ef: int = 64, capacity: int = 64) -> None:
        hnswlib = _require("hnswlib")
        self.dim, self.m, self.ef = dim, m, ef
        self._index = hnswlib.Index(space="ip", dim=dim)
        self._index.init_index(max_elements=capacity, ef_construction=ef_construction, M=m,
                               allow_replace_deleted=True)
        self._index.set_ef(ef)
        self._index.set_num_threads(1)  # one query per call: a thread pool per call would cost more than it saves
        self._capacity = capacity
        self._live: set[int] = set()

    def add(self, key: int, vector: np.ndarray) -> None:
        row = _row(vector, self.dim)
        if key not in self._live:
            try:  # a removed key whose slot was not reused yet: revive it, then update its vector below
                self._index.unmark_deleted(key)
            except RuntimeError:  # unknown label: a new element, into a deleted slot if there is one
                if self._index.get_current_count() - len(self._live) > 0:
                    self._index.add_items(row, [key], replace_deleted=True)
                else:
                    if self._index.get_current_count() >= self._capacity:
                        self._capacity *= 2
                        self._index.resize_index(self._capacity)
                    self._index.add_items(row, [key])
                self._live.add(key)
                return
        self._index.add_items(row, [key])  # an existing label: hnswlib updates its vector and links
        self._live.add(key)

    def search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        k = min(k, len(self._live))
        if k < 1:
            return []
        row = _row(vector, self.dim)
        try:
            labels, distances = self._index.knn_query(row, k=k)
        except RuntimeError:  # deletions cut the graph: fewer than k reachable at this ef
            labels, distances = self._search_wide(row, k)
        return [(int(label), 1.0 - float(distance)) for label, distance in zip(labels[0], distances[0], strict=True)]

    def _search_wide(self, row: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Retry with the beam as wide as the index, then with fewer results."""
        self._index.set_ef(max(self.ef, self._index.get_current_count()))
        try:
            while k > 0:
                try:
                    return self._index.knn_query(row, k=k)
                except RuntimeError:
                    k //= 2
            return np.zeros((1, 0), dtype=np.uint64), np.zeros((1, 0), dtype=np.float32)
        finally:
            self._index.set_ef(self.ef)

    def remove(self, key: int) -> None:
        if key in self._live:
            self._index.mark_deleted(key)
            self._live.discard(key)

    def __len__(self) -> int:
        return len(self._live)

    def memory_bytes(self) -> int:
        """`hnsw_layout_bytes` for the slots in use (live and deleted), plus the Python set of live keys."""
        live_set = sys.getsizeof(self._live) + 28 * len(self._live)
        return hnsw_layout_bytes(self._index.get_current_count(), self._capacity, self.dim, self.m) + live_set


class FaissIndex:
    """faiss IndexHNSWFlat over inner product. faiss HNSW cannot delete, so a removed key becomes a tombstone
    that searches over-fetch past; when tombstones outnumber live vectors the index is rebuilt from the live
    ones."""

    def __init__(self, dim: int, m: int = 16, ef_construction: int = 200, ef: int = 64) -> None:
        self._faiss = _require("faiss")
        self.dim, self.m, self.ef_construction, self.ef = dim, m, ef_construction, ef
        self._index = self._new_index()
        self._keys = np.full(64, -1, dtype=np.int64)  # faiss id → key; -1: tombstone
        self._ids: dict[int, int] = {}  # key → faiss id

    def _new_index(self) -> Any:
        index = self._faiss.IndexHNSWFlat(self.dim, self.m, self._faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.ef_construction
        index.hnsw.efSearch = self.ef
        return index

    def add(self, key: int, vector: np.ndarray) -> None:
        row = _row(vector, self.dim)
        if key in self._ids:  # a new vector for a live key: the old one becomes a tombstone
            self.remove(key)
        slot = self._index.ntotal
        if slot == self._keys.shape[0]:
            self._keys = np.concatenate([self._keys, np.full(slot, -1, dtype=np.int64)])
        self._index.add(row)
        self._keys[slot] = key
        self._ids[key] = slot

    def search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        k = min(k, len(self._ids))
        if k < 1:
            return []
        row = _row(vector, self.dim)
        total = self._index.ntotal
        tombstones = total - len(self._ids)
        fetch = min(total, k + min(tombstones, k))
        while True:
            scores, ids = self._index.search(row, fetch)
            found = [(int(self._keys[i]), float(s)) for i, s in zip(ids[0], scores[0], strict=True)
                     if i >= 0 and self._keys[i] >= 0]
            if len(found) >= k:
                return found[:k]
            if fetch >= total:  # the graph reaches fewer than k (k near the count): score them all
                return self._search_all(row, k)
            fetch = min(total, fetch * 2)

    def _search_all(self, row: np.ndarray, k: int) -> list[tuple[int, float]]:
        total = self._index.ntotal
        live = np.flatnonzero(self._keys[:total] >= 0)
        scores = self._index.storage.reconstruct_n(0, total)[live] @ row[0]
        order = np.argsort(-scores, kind="stable")[:k]
        return [(int(self._keys[live[i]]), float(scores[i])) for i in order]

    def remove(self, key: int) -> None:
        slot = self._ids.pop(key, None)
        if slot is None:
            return
        self._keys[slot] = -1
        if self._index.ntotal - len(self._ids) > len(self._ids):
            self._rebuild()

    def _rebuild(self) -> None:
        """A fresh graph over the live vectors, in their old order."""
        total = self._index.ntotal
        live = np.flatnonzero(self._keys[:total] >= 0)
        vectors = self._index.storage.reconstruct_n(0, total)[live] if total else np.zeros((0, self.dim))
        keys = self._keys[live]
        self._index = self._new_index()
        if len(live):
            self._index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        self._keys = np.full(max(64, 2 * len(live)), -1, dtype=np.int64)
        self._keys[: len(live)] = keys
        self._ids = {int(key): slot for slot, key in enumerate(keys)}

    def __len__(self) -> int:
        return len(self._ids)

    def memory_bytes(self) -> int:
        """faiss's arrays as they stand: vectors (4·dim per slot, tombstones included), levels (4), offsets (8)
        and the neighbour table (4 per link slot: 2M at level 0, M per upper level), plus this class's id→key
        array (8 per slot) and key→id dict."""
        hnsw = self._index.hnsw
        faiss_bytes = (self._index.ntotal * self.dim * 4 + 4 * hnsw.levels.size() + 8 * hnsw.offsets.size()
                       + 4 * hnsw.neighbors.size())
        return faiss_bytes + self._keys.nbytes + _dict_bytes(self._ids)
