"""What a semantic cache's own work costs per lookup (embedding excluded), through a real method (`threshold`).

Part 1, the in-memory index at scale: `--entries` entries (default 100,000) of clustered random unit vectors
(384-d, MiniLM's width), for every index (hnsw, faiss, exact) with the documents in memory and in SQLite. Per
lookup: the search side (the `lookup` wall time minus the Decision's fetch_ms), p50/p95; the document fetch of
the hits, p50; recall@1 of the nearest entry the method saw against numpy's brute force over the same vectors.

Part 2, the miss cost of the category-aware paper's hybrid design against a remote vector database, at
`--miss-entries` (default 10,000): hnsw in memory beside SQLite or Redis, versus a Chroma server holding vectors
and documents (started here on loopback unless --chroma-url is given). Misses are the requests a cache pays for
on top of the LLM call, hits include the fetch; the ratio is remote over hybrid, at p50. It runs twice: with one
partition (scope=global; Chroma searches unfiltered) and with entries spread over `--users` users
(scope=user; Chroma filters every query on the partition, the hybrid searches that user's own small index).

Half the queries are paraphrases of stored entries (the stored vector nudged: similarity ~0.95, hits at the
0.9 threshold), half fresh points of the same clusters (misses). HNSW runs at the method defaults (M 16,
ef_construction 200, ef 64) unless told otherwise.

    .venv/bin/python benchmarks/semantic_lookup.py                                  # the full run (~15 min, 2 cores)
    .venv/bin/python benchmarks/semantic_lookup.py --entries 5000 --miss-entries 1000 --queries 200   # a smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def clustered(n: int, dim: int, clusters: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, their cluster centres' ids): unit vectors scattered around random centres (cosine ~0.6 within
    a cluster, ~0 across), the shape of embedded prompts on many topics."""
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    which = rng.integers(0, clusters, n)
    points = centres[which] + 0.8 * rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim)
    return points / np.linalg.norm(points, axis=1, keepdims=True), centres


def make_queries(stored: np.ndarray, centres: np.ndarray, count: int, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(queries, source): alternating paraphrases (a stored vector nudged to similarity ~0.95; source is its
    row) and fresh points of the clusters (source -1)."""
    dim = stored.shape[1]
    paraphrase = np.arange(count) % 2 == 0
    picks = rng.integers(0, stored.shape[0], count)
    nudged = stored[picks] + 0.33 * rng.standard_normal((count, dim)).astype(np.float32) / np.sqrt(dim)
    fresh = centres[rng.integers(0, centres.shape[0], count)]
    fresh = fresh + 0.8 * rng.standard_normal((count, dim)).astype(np.float32) / np.sqrt(dim)
    queries = np.where(paraphrase[:, None], nudged, fresh)
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    return queries, np.where(paraphrase, picks, -1)


def exact_nearest(stored: np.ndarray, queries: np.ndarray, users: np.ndarray, query_users: np.ndarray
                  ) -> np.ndarray:
    """The row of each query's most similar stored vector among its user's (all share one user when global)."""
    best = []
    for rows in np.array_split(np.arange(len(queries)), 16):
        scores = queries[rows] @ stored.T
        scores[users[None, :] != query_users[rows, None]] = -np.inf
        best.append(np.argmax(scores, axis=1))
    return np.concatenate(best)


@dataclass
class Workload:
    """Stored vectors and timed queries, with the user of each (the partition when scope=user)."""

    stored: np.ndarray
    users: np.ndarray
    queries: np.ndarray
    query_users: np.ndarray
    truth: np.ndarray


def workload(entries: int, args: argparse.Namespace, rng: np.random.Generator, users: int = 1) -> Workload:
    """Entries spread round-robin over `users`; a paraphrase asks as its source entry's user, a fresh query as
    a random one."""
    stored, centres = clustered(entries, args.dim, args.clusters, rng)
    owner = np.arange(entries) % users
    queries, source = make_queries(stored, centres, args.queries, rng)
    asking = np.where(source >= 0, owner[np.maximum(source, 0)], rng.integers(0, users, len(queries)))
    return Workload(stored, owner, queries, asking, exact_nearest(stored, queries, owner, asking))


@dataclass
class Measured:
    build_s: float
    search_ms: list[float]  # lookup wall minus fetch, every query
    miss_ms: list[float]  # lookup wall of the misses
    hit_ms: list[float]  # lookup wall of the hits (search + fetch)
    fetch_ms: list[float]  # the hits' fetch alone
    recall: float
    memory_mb: float


def measure(params: list[str], work: Workload) -> Measured:
    """Open a `threshold` cache on these storage parameters, insert every stored vector, time every query."""
    from cachebench.registry import build_method
    from cachebench.semantic.method import Query

    method = build_method("threshold", ["threshold=0.9", *params])
    method.open(work.stored.shape[1], f"bench-{uuid.uuid4().hex[:10]}")
    try:
        start = time.perf_counter()
        for key, (vector, user) in enumerate(zip(work.stored, work.users, strict=True)):
            method.insert(Query(f"prompt {key}", vector, "qa", f"u{user}", 0.0), f"response {key}")
        build_s = time.perf_counter() - start
        for vector, user in zip(work.queries[:50], work.query_users, strict=False):  # warm up: connections, caches
            method.lookup(Query("warm", vector, "qa", f"u{user}", 1.0))
        result = Measured(build_s, [], [], [], [], 0.0, method.memory_bytes() / 2**20)
        nearest_ok = 0
        for vector, user, best in zip(work.queries, work.query_users, work.truth, strict=True):
            start = time.perf_counter()
            decision = method.lookup(Query("q", vector, "qa", f"u{user}", 1.0))
            wall = (time.perf_counter() - start) * 1000
            result.search_ms.append(wall - decision.fetch_ms)
            (result.hit_ms if decision.hit else result.miss_ms).append(wall)
            if decision.hit:
                result.fetch_ms.append(decision.fetch_ms)
            nearest_ok += decision.nearest_key == best  # keys are insertion order: key i is stored[i]
        result.recall = nearest_ok / len(work.queries)
        return result
    finally:
        method.close()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(values, q))


def miss_cost(args: argparse.Namespace, hnsw: list[str], rng: np.random.Generator) -> None:
    """Part 2: hybrid vs remote, with one partition and with per-user partitions (where Chroma must filter)."""
    from cachebench.semantic.servers import chroma_server, redis_server

    print(f"### Miss cost at {args.miss_entries:,} entries: hybrid (in-memory HNSW + document store) vs remote "
          "vector DB\n")
    print("| partitions | architecture | insert ms | miss p50 ms | miss p95 ms | hit p50 ms | hit p95 ms | recall@1 | "
          "remote/this miss p50 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as scratch, redis_server(args.redis_url) as redis_url, \
            chroma_server(args.chroma_url, Path(scratch) / "chroma") as chroma_url:
        setups = {"hybrid: hnsw + sqlite": ["store=sqlite"],
                  "hybrid: hnsw + redis": ["store=redis", f"redis_url={redis_url}"],
                  "remote: chroma server": ["store=chroma", f"chroma_url={chroma_url}"]}
        for label, users, scope in (("one (global)", 1, "global"), (f"{args.users} users", args.users, "user")):
            work = workload(args.miss_entries, args, rng, users)
            results = {name: measure(["index=hnsw", f"scope={scope}", *params, *hnsw], work)
                       for name, params in setups.items()}
            remote = statistics.median(results["remote: chroma server"].miss_ms)
            for name, m in results.items():
                print(f"| {label} | {name} | {1000 * m.build_s / args.miss_entries:.2f} | {pct(m.miss_ms, 50):.3f} | "
                      f"{pct(m.miss_ms, 95):.3f} | {pct(m.hit_ms, 50):.3f} | {pct(m.hit_ms, 95):.3f} | "
                      f"{m.recall:.3f} | {remote / statistics.median(m.miss_ms):.1f}x |", flush=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000, help="entries for part 1 (in-memory indexes)")
    parser.add_argument("--queries", type=int, default=1000, help="timed lookups per configuration")
    parser.add_argument("--miss-entries", type=int, default=10_000, help="entries for part 2 (hybrid vs remote)")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--indexes", nargs="+", default=["hnsw", "faiss", "exact"])
    parser.add_argument("--stores", nargs="+", default=["memory", "sqlite"])
    parser.add_argument("--hnsw-m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=200)
    parser.add_argument("--ef", type=int, default=64)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="used if a server answers, else "
                        "a redis-server is started")
    parser.add_argument("--chroma-url", default=None, help="a running Chroma server (default: start one)")
    parser.add_argument("--users", type=int, default=10, help="users in part 2's per-user-partition setting")
    parser.add_argument("--skip-part1", action="store_true")
    parser.add_argument("--skip-part2", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    from cachebench.provenance import hardware

    hnsw = [f"hnsw_m={args.hnsw_m}", f"hnsw_ef_construction={args.ef_construction}", f"hnsw_ef={args.ef}"]
    rng = np.random.default_rng(args.seed)
    print(f"Machine: {hardware(torch.device('cpu'))}; {args.dim}-d clustered unit vectors ({args.clusters} "
          f"clusters), {args.queries} timed lookups each (half paraphrases, half fresh), threshold 0.9, "
          f"HNSW M {args.hnsw_m} / ef_construction {args.ef_construction} / ef {args.ef}.\n", flush=True)

    if not args.skip_part1:
        work = workload(args.entries, args, rng)
        print(f"### Lookup at {args.entries:,} entries (search = lookup minus fetch)\n")
        print("| index | store | build s | search p50 ms | search p95 ms | fetch p50 ms | hits | recall@1 | "
              "memory MB |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for index in args.indexes:
            for store in args.stores:
                m = measure([f"index={index}", f"store={store}", *hnsw], work)
                print(f"| {index} | {store} | {m.build_s:.1f} | {pct(m.search_ms, 50):.3f} | "
                      f"{pct(m.search_ms, 95):.3f} | {pct(m.fetch_ms, 50):.3f} | {len(m.hit_ms)} | {m.recall:.3f} | "
                      f"{m.memory_mb:.0f} |", flush=True)
        print()
    if not args.skip_part2:
        miss_cost(args, hnsw, rng)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
