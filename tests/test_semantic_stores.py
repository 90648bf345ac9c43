"""The semantic cache's storage against real libraries and real servers: hnswlib and faiss indexes checked
against the exact index, SQLite / Redis / Chroma stores round-tripping documents, partitions that never leak,
threads sharing one store, and a real method running on each backend."""

from __future__ import annotations

import sqlite3
import threading
import uuid

import numpy as np
import pytest
from semantic_servers import chroma_url, redis_url  # noqa: F401

from cachebench.errors import UsageError
from cachebench.registry import build_method
from cachebench.semantic.backends import open_storage
from cachebench.semantic.chroma_store import ChromaStore, collection_name
from cachebench.semantic.docstores import RedisDocuments, SqliteDocuments
from cachebench.semantic.indexes import FaissIndex, HnswIndex
from cachebench.semantic.method import Query
from cachebench.semantic.servers import free_port
from cachebench.semantic.storage import Document, ExactIndex, LocalPartitions, MemoryDocuments

INDEXES = {"hnsw": lambda dim: HnswIndex(dim, 16, 100, 64), "faiss": lambda dim: FaissIndex(dim, 16, 100, 64),
           "exact": ExactIndex}


def clustered(n: int, dim: int, seed: int = 0, clusters: int = 40, spread: float = 0.8) -> np.ndarray:
    """Unit vectors around random centres, the shape of embedded prompts: many near neighbours per query."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    points = centres / np.linalg.norm(centres, axis=1, keepdims=True)
    points = points[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, dim)) / np.sqrt(dim)
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def namespace() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


def recall_at_1(index, exact: ExactIndex, queries: np.ndarray) -> float:
    return float(np.mean([index.search(q, 1)[0][0] == exact.search(q, 1)[0][0] for q in queries]))


@pytest.mark.parametrize("kind", ["hnsw", "faiss"])
def test_index_matches_exact_through_removal_and_readd(kind: str) -> None:
    dim, n = 64, 3000
    vectors = clustered(n + 300, dim)
    index, exact = INDEXES[kind](dim), ExactIndex(dim)
    assert index.search(vectors[0], 5) == []  # empty
    for key in range(n):
        index.add(key, vectors[key])
        exact.add(key, vectors[key])
    queries = vectors[n:]
    assert recall_at_1(index, exact, queries) >= 0.95
    top, reference = index.search(queries[0], 5), exact.search(queries[0], 5)
    assert [k for k, _ in top] == [k for k, _ in reference]
    assert np.allclose([s for _, s in top], [s for _, s in reference], atol=1e-4)  # cosine, not a distance

    removed = set(range(0, n, 3)) | set(range(1, n, 3))  # two thirds: faiss rebuilds once tombstones outnumber
    for key in removed:
        index.remove(key)
        exact.remove(key)
    index.remove(10**9)  # unknown key: no error
    assert len(index) == len(exact) == n - len(removed)
    for q in queries:
        assert not {k for k, _ in index.search(q, 20)} & removed
    assert recall_at_1(index, exact, queries) >= 0.95

    back = sorted(removed)[::5]
    fresh = clustered(len(back), dim, seed=9)
    for key, new in zip(back, fresh, strict=True):  # re-added under the same key, half of them with a new vector
        vector = vectors[key] if key % 2 else new
        index.add(key, vector)
        exact.add(key, vector)
        assert index.search(vector, 1)[0][0] == key
    assert len(index) == len(exact)
    assert len(index.search(queries[0], 10**6)) == len(exact)  # k clamps to the live count


@pytest.mark.parametrize("kind", ["hnsw", "faiss"])
def test_update_of_a_live_key_replaces_its_vector(kind: str) -> None:
    vectors = clustered(200, 32, seed=1)
    index = INDEXES[kind](32)
    for key in range(100):
        index.add(key, vectors[key])
    index.add(7, vectors[150])
    assert index.search(vectors[150], 1)[0][0] == 7
    assert 7 not in {k for k, _ in index.search(vectors[7], 3)}
    assert len(index) == 100


def test_hnsw_memory_estimate_against_its_saved_file(tmp_path) -> None:
    """The estimate (hnsw_layout_bytes) counts what the saved file holds plus what hnswlib keeps beside it in
    memory (label map, per-slot locks, the fixed 2.6 MB label-lock table): stated bound 1.0-1.55x the file at 5,000
    384-d vectors."""
    dim, n = 384, 5000
    index = HnswIndex(dim, 16, 40, 16)
    for key, vector in enumerate(clustered(n, dim, seed=2)):
        index.add(key, vector)
    path = tmp_path / "index.bin"
    index._index.save_index(str(path))
    ratio = index.memory_bytes() / path.stat().st_size
    assert 1.0 <= ratio <= 1.55, ratio


def test_faiss_memory_estimate_against_its_serialization() -> None:
    """faiss's arrays plus this class's id maps: stated bound 1.0-1.15x faiss.serialize_index's bytes."""
    import faiss

    dim, n = 384, 5000
    index = FaissIndex(dim, 16, 40, 16)
    for key, vector in enumerate(clustered(n, dim, seed=3)):
        index.add(key, vector)
    ratio = index.memory_bytes() / faiss.serialize_index(index._index).nbytes
    assert 1.0 <= ratio <= 1.15, ratio


@pytest.mark.parametrize("kind", ["hnsw", "faiss", "exact"])
def test_partitions_isolate_even_identical_vectors(kind: str) -> None:
    dim = 16
    parts = LocalPartitions(lambda: INDEXES[kind](dim))
    vector = clustered(1, dim)[0]
    parts.add(1, vector, "user:a")
    parts.add(2, vector, "user:b")
    assert [k for k, _ in parts.search(vector, "user:b", 5)] == [2]
    assert [k for k, _ in parts.search(vector, "user:a", 5)] == [1]
    assert parts.search(vector, "user:c", 5) == []
    parts.remove(2, "user:b")
    parts.remove(2, "user:a")  # wrong partition: nothing happens there
    assert parts.search(vector, "user:b", 5) == []
    assert [k for k, _ in parts.search(vector, "user:a", 5)] == [1]
    assert parts.memory_bytes() > 0


DOCS = [Document("What's the capital of France?", "Paris.", "geo", "alice"),
        Document("Größe von Zürich? 東京は？ 🚀", "« ça dépend » — 約 1,400万人 ✓", "ünïcode", "ユーザー"),
        Document("", "", "", "")]


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request):
    if request.param == "memory":
        opened = MemoryDocuments()
    elif request.param == "sqlite":
        opened = SqliteDocuments(None, namespace())
    else:
        opened = RedisDocuments(request.getfixturevalue("redis_url"), namespace())
    yield opened
    opened.close()


def test_document_store_round_trip(store) -> None:
    for key, document in enumerate(DOCS):
        store.put(key, document)
    assert [store.get(key) for key in range(len(DOCS))] == DOCS
    assert store.get(99) is None
    size = store.stored_bytes()
    assert size >= sum(d.nbytes() for d in DOCS)
    store.put(0, DOCS[1])  # overwrite
    assert store.get(0) == DOCS[1]
    store.delete(1)
    store.delete(1)
    store.delete(42)  # unknown: no error
    assert store.get(1) is None
    assert store.get(0) == DOCS[1]
    store.delete(0)
    store.delete(2)
    assert store.stored_bytes() == 0


def test_redis_close_removes_only_its_namespace(redis_url) -> None:  # noqa: F811
    import redis

    raw = redis.Redis.from_url(redis_url)
    mine, other = namespace(), namespace()
    first, second = RedisDocuments(redis_url, mine), RedisDocuments(redis_url, other)
    for key in range(1200):  # more than one SCAN page and one DEL batch
        first.put(key, DOCS[key % 3])
    second.put(1, DOCS[0])
    assert len(list(raw.scan_iter(match=f"cachebench:{mine}:*"))) == 1200
    assert raw.get(f"cachebench:{mine}:1") == DOCS[1].to_json().encode()
    first.close()
    assert list(raw.scan_iter(match=f"cachebench:{mine}:*")) == []
    assert second.get(1) == DOCS[0]
    second.close()
    assert raw.exists(f"cachebench:{other}:1") == 0
    raw.close()


def test_sqlite_temp_file_removed_and_named_file_kept(tmp_path) -> None:
    temporary = SqliteDocuments(None, namespace())
    temporary.put(1, DOCS[0])
    path = temporary.path
    assert path.exists()
    temporary.close()
    temporary.close()
    assert not path.exists() and not path.with_name(path.name + "-wal").exists()

    named = tmp_path / "docs.sqlite"
    a, b = SqliteDocuments(named, "run-a"), SqliteDocuments(named, "run-b")  # two runs sharing one file
    a.put(1, DOCS[0])
    b.put(1, DOCS[1])
    assert (a.get(1), b.get(1)) == (DOCS[0], DOCS[1])
    assert a._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    a.close()
    b.close()
    assert named.exists()
    with sqlite3.connect(named) as raw:  # each run dropped its own table
        assert raw.execute("SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()[0] == 0


def test_chroma_store_end_to_end(chroma_url) -> None:  # noqa: F811
    import chromadb
    from chromadb.config import Settings

    dim = 16
    vectors = clustered(60, dim, seed=4)
    ns = namespace() + "/with odd chars:*"
    store = ChromaStore(chroma_url, ns, dim, m=12, ef_construction=50, ef=32)
    assert store.search(vectors[0], "A", 3) == []  # empty collection
    for key in range(40):
        store.put(key, DOCS[key % 3])
        assert store.get(key) == DOCS[key % 3]  # pending until add
        store.add(key, vectors[key], "A" if key < 30 else "B")
        if key == 29:  # partition B has no collection yet: answered without a round trip
            assert store.search(vectors[29], "A", 1)[0][0] == 29 and store.search(vectors[29], "B", 1) == []
    store.add(100, vectors[0], "B")  # identical vector, other partition, no document
    found = store.search(vectors[5], "A", 3)
    assert found[0][0] == 5 and abs(found[0][1] - 1.0) < 1e-4
    assert all(key < 30 for key, _ in store.search(vectors[0], "A", 100))
    assert len(store.search(vectors[0], "A", 100)) == 30  # k above the matches: all of them, no error
    assert {key for key, _ in store.search(vectors[0], "B", 100)} == set(range(30, 40)) | {100}
    assert store.search(vectors[0], "C", 5) == []
    assert store.get(7) == DOCS[1]
    assert store.stored_bytes() == sum(len(DOCS[k % 3].to_json().encode()) for k in range(40))
    assert store.memory_bytes() > 41 * dim * 4

    store.put(7, DOCS[0])  # a live record: the document changes, the vector stays
    assert store.get(7) == DOCS[0]
    assert store.search(vectors[7], "A", 1)[0][0] == 7
    store.remove(5, "A")
    store.delete(5)
    assert store.get(5) is None
    assert 5 not in {key for key, _ in store.search(vectors[5], "A", 30)}
    store.put(5, DOCS[2])
    store.add(5, vectors[5], "A")  # re-added
    assert store.search(vectors[5], "A", 1)[0][0] == 5 and store.get(5) == DOCS[2]

    store.close()
    store.close()
    host, port = chroma_url.rsplit("//", 1)[1].split(":")
    raw = chromadb.HttpClient(host=host, port=int(port), settings=Settings(anonymized_telemetry=False))
    left = [c.name for c in raw.list_collections()]
    assert collection_name(f"{ns}-A") not in left and collection_name(f"{ns}-B") not in left  # one per partition


def test_collection_names_are_valid_and_distinct() -> None:
    import re

    names = {collection_name(ns) for ns in ["a", "a/b", "a-b", "x" * 2000, "..", "日本"]}
    assert len(names) == 6
    assert all(re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9._-]{1,510}[a-zA-Z0-9]", n) for n in names)


def test_unreachable_servers_are_one_line_usage_errors() -> None:
    dead = free_port()
    with pytest.raises(UsageError) as redis_error:
        RedisDocuments(f"redis://127.0.0.1:{dead}/0", "x")
    with pytest.raises(UsageError) as chroma_error:
        ChromaStore(f"http://127.0.0.1:{dead}", "x", 8)
    for error, words in ((redis_error, ["redis-server", "redis_url"]), (chroma_error, ["chroma run", "chroma_url"])):
        message = str(error.value)
        assert "\n" not in message and f"127.0.0.1:{dead}" in message
        assert all(word in message for word in words), message


def test_chroma_refuses_an_index_it_would_not_use() -> None:
    method = build_method("threshold", ["index=exact", "store=chroma"])
    with pytest.raises(UsageError, match="index=hnsw"):
        open_storage(method.params, 8, namespace())


def run_threads(target, count: int = 4) -> None:
    errors: list[BaseException] = []

    def guarded(worker: int) -> None:
        try:
            target(worker)
        except BaseException as error:  # reported below, with the thread's failure
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(w,)) for w in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors


def test_threads_share_hnsw_partitions() -> None:
    dim, per_thread = 32, 400
    vectors = clustered(4 * per_thread, dim, seed=5)
    parts = LocalPartitions(lambda: HnswIndex(dim, 16, 60, 64, capacity=16))  # small: resizes happen under load

    def work(worker: int) -> None:
        for i in range(per_thread):
            key = worker * per_thread + i
            parts.add(key, vectors[key], f"p{key % 2}")
            found = parts.search(vectors[key], f"p{key % 2}", 3)
            assert found and found[0][0] == key
            if i % 3 == 0:
                parts.remove(key, f"p{key % 2}")

    run_threads(work)
    removed = {key for key in range(4 * per_thread) if key % per_thread % 3 == 0}
    for key in range(4 * per_thread):
        found = {k for k, _ in parts.search(vectors[key], f"p{key % 2}", 5)}
        assert not found & removed
        if key not in removed:
            assert key in found


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_threads_share_document_stores(kind: str, request) -> None:
    ns = namespace()
    opened = SqliteDocuments(None, ns) if kind == "sqlite" else RedisDocuments(request.getfixturevalue("redis_url"),
                                                                               ns)
    per_thread = 150

    def work(worker: int) -> None:
        for i in range(per_thread):
            key = worker * per_thread + i
            document = Document(f"prompt {key}", f"réponse {key}", "c", f"u{worker}")
            opened.put(key, document)
            assert opened.get(key) == document
            if i % 4 == 0:
                opened.delete(key)

    try:
        run_threads(work)
        expected = 0
        for key in range(4 * per_thread):
            document = opened.get(key)
            if key % per_thread % 4 == 0:
                assert document is None
            else:
                assert document == Document(f"prompt {key}", f"réponse {key}", "c", f"u{key // per_thread}")
                expected += len(document.to_json().encode())
        assert opened.stored_bytes() == expected
    finally:
        opened.close()


def query(vector: np.ndarray, text: str, t: float) -> Query:
    return Query(prompt=text, embedding=vector, category="qa", user="u1", timestamp=t)


@pytest.mark.parametrize(("index", "store"), [("hnsw", "redis"), ("hnsw", "chroma"), ("hnsw", "sqlite"),
                                              ("faiss", "memory")])
def test_threshold_method_on_each_backend(index: str, store: str, request) -> None:
    dim = 32
    server = {"redis": ["redis_url", "redis_url"], "chroma": ["chroma_url", "chroma_url"]}.get(store)
    extra = [f"{server[0]}={request.getfixturevalue(server[1])}"] if server else []
    method = build_method("threshold", [f"index={index}", f"store={store}", "threshold=0.9", *extra])
    ns = namespace()
    method.open(dim, ns)
    vectors = clustered(80, dim, seed=6, spread=1.5)
    try:
        for key in range(60):
            decision = method.lookup(query(vectors[key], f"q{key}", key))
            assert not decision.hit
            method.record_miss(query(vectors[key], f"q{key}", key), f"answer {key}", decision)
        assert method.entries() == 60
        rng = np.random.default_rng(7)
        for key in (3, 17, 42):  # a paraphrase: the same vector nudged
            nudged = vectors[key] + 0.05 * rng.standard_normal(dim).astype(np.float32) / np.sqrt(dim)
            decision = method.lookup(query(nudged / np.linalg.norm(nudged), f"Q{key}?", 100))
            assert decision.hit and decision.key == key and decision.response == f"answer {key}"
            assert decision.similarity > 0.99 and decision.fetch_ms > 0
        far = method.lookup(query(vectors[70], "unrelated", 101))
        assert not far.hit
        method.evict(17)
        again = method.lookup(query(vectors[17], "q17", 102))
        assert again.nearest_key != 17 and not again.hit
        assert method.memory_bytes() > 0
    finally:
        method.close()
    if store == "redis":
        import redis

        raw = redis.Redis.from_url(request.getfixturevalue("redis_url"))
        assert list(raw.scan_iter(match=f"cachebench:{ns}:*")) == []
        raw.close()
