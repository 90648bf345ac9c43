"""Semantic caches at scale: generated streams of 100k and 1M requests through the real eval path.

For each stream size (`--requests`, default 100000,1000000) the `threshold` method (0.8) runs `semantic.stream`
with `--requests N` and `--embedding precomputed` (cachebench.semantic.evaluate.run_semantic_eval, what
`cachebench eval` runs), for every index (hnsw, faiss) x document store (sqlite, redis) asked for, each run in a
process of its own so that its peak memory and wall time are its own. Per run:

  entries      the cache's entries at the end (threshold inserts every miss and never evicts)
  hit/wrong rate  hits, and wrong hits (false or stale: a row scored 0), per request after the warm-up; not
               `cachebench show`'s error rate, which counts false hits only and gives stale hits apart
  lookup p50/p99  the rows' lookup_ms over all requests: the cache's own work per request (index search and
               decision), embedding and the document fetch excluded
  B/entry      the last row's cache_bytes / cache_entries (index, documents and per-entry metadata)
  build s      a fresh index of the run's kind built from the final entries' vectors in one bulk add (hnswlib
               add_items / faiss add, one thread, M 16, ef_construction 200), timed apart from the run
  peak RSS     the run's process at its peak (stream, vectors, index, rows and the final Parquet write)
  wall s       the run itself: building the stream, looking up every request, writing the rows (checkpoints
               included; `ckpt s` is their share); not the embedding, which is done once per size beforehand
               and kept in the user cache folder, so that a second invocation skips it

The embedding (MiniLM, the stream's distinct prompts once, in batches) is reported on its own line: on one core
about 4 minutes for 100k requests and 34 for 1M, whose vectors take 720 MB on disk. Runs call run_semantic_eval
(where `cachebench.eval_run.run_eval` sends a semantic method) so that each can take an embedder that already
holds those vectors. Redis runs start a private `redis-server` on a free port (cachebench.semantic.servers);
without one they are skipped with a line saying so.

    .venv/bin/python benchmarks/semantic_scale.py                                   # 100k and 1M, every combination
    .venv/bin/python benchmarks/semantic_scale.py --requests 20000 --indexes hnsw --stores sqlite   # a smoke run
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

INDEXES = ("hnsw", "faiss")
STORES = ("sqlite", "redis")
TASK = "semantic.stream"
COLUMNS = ("requests", "index", "store", "entries", "hit rate", "wrong rate", "lookup p50 ms", "lookup p99 ms",
           "B/entry", "build s", "peak RSS GB", "wall s", "ckpt s")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", default="100000,1000000", help="stream sizes, comma-separated")
    parser.add_argument("--indexes", default=",".join(INDEXES), help="hnsw and/or faiss")
    parser.add_argument("--stores", default=",".join(STORES), help="sqlite and/or redis")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch/faiss threads (0: the libraries' default)")
    parser.add_argument("--vectors", type=Path, default=None,
                        help="folder for the embedded prompts (default: the cachebench user cache)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--prepare", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.sizes = [int(part) for part in args.requests.split(",") if part.strip()]
    args.index_list = [part for part in args.indexes.split(",") if part]
    args.store_list = [part for part in args.stores.split(",") if part]
    unknown = sorted(set(args.index_list) - set(INDEXES)) + sorted(set(args.store_list) - set(STORES))
    if unknown or not args.sizes or min(args.sizes) < 1:
        parser.error(f"bad --requests, --indexes or --stores ({', '.join(unknown) or args.requests})")
    return args


def set_threads(threads: int) -> None:
    """One knob for the libraries that spin threads (torch for the embedder, faiss's OpenMP)."""
    if threads <= 0:
        return
    import torch

    torch.set_num_threads(threads)
    try:
        import faiss

        faiss.omp_set_num_threads(threads)
    except ImportError:
        pass


# --- the parent: embed once per size, run each combination in a child, print the table -----------------------------

def stream_texts(requests: int, seed: int) -> list[str]:
    """The stream's distinct prompts, as the runner's precomputed embedding collects them."""
    from cachebench.semantic.stream import StreamRequest
    from cachebench.taskspec import all_tasks, builder_module

    spec = all_tasks()[TASK]
    stream = builder_module(spec).build_stream(StreamRequest(seed=seed, args=spec.builder_args, requests=requests))
    return list(dict.fromkeys(request.prompt for request in stream.all_requests()))


def prepare(requests: int, seed: int, folder: Path) -> dict[str, Any]:
    """The stream's prompts embedded, as `<stem>.npy` (vectors) and `<stem>.json` (texts and ms per text, written
    last), unless an earlier invocation left them; run in a process of its own, so that the parent stays small
    while the runs measure their memory."""
    begun = time.perf_counter()
    texts = stream_texts(requests, seed)
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    stem = folder / f"stream-{requests}-seed{seed}-{digest}"
    index = stem.with_suffix(".json")
    if not index.exists():
        from cachebench.semantic.embedder import load_embedder

        embedder = load_embedder()
        chunks, spent, step = [], 0.0, 20_000
        for start in range(0, len(texts), step):
            started = time.perf_counter()
            chunks.append(embedder.encode(texts[start:start + step]))
            spent += time.perf_counter() - started
            print(f"  embedded {min(start + step, len(texts)):,} / {len(texts):,} prompts ({spent:.0f} s)",
                  file=sys.stderr, flush=True)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(stem.with_suffix(".npy"), np.concatenate(chunks))
        partial = stem.with_suffix(".json.tmp")
        partial.write_text(json.dumps({"texts": texts, "ms_per_text": spent * 1000 / max(1, len(texts))}))
        os.replace(partial, index)
    ms_per_text = json.loads(index.read_text())["ms_per_text"]
    return {"stem": str(stem), "ms_per_text": ms_per_text, "distinct": len(texts),
            "ready_s": time.perf_counter() - begun}


def in_child(flag: str, job: dict[str, Any]) -> dict[str, Any]:
    """`--flag job` in a fresh process: its JSON result, or the reason it failed."""
    done = subprocess.run([sys.executable, __file__, flag, json.dumps(job)], capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        reason = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        return {**job, "error": reason}
    sys.stderr.write("".join(line + "\n" for line in done.stderr.splitlines() if line.startswith("  embedded")))
    return json.loads(lines[-1])


def cells(result: dict[str, Any]) -> list[str]:
    if "error" in result:
        return [f"{result['requests']:,}", result["index"], result["store"], f"failed: {result['error']}"]
    return [f"{result['requests']:,}", result["index"], result["store"], f"{result['entries']:,}",
            f"{result['hit_rate']:.3f}", f"{result['wrong_rate']:.3f}", f"{result['lookup_p50_ms']:.3f}",
            f"{result['lookup_p99_ms']:.3f}",
            f"{result['bytes_per_entry']:,.0f}", f"{result['build_s']:.1f}", f"{result['peak_rss_gb']:.2f}",
            f"{result['wall_s']:.0f}", f"{result['checkpoint_s']:.0f}"]


def render(results: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cells(result)) + " |" for result in results]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.child or args.prepare:
        job = json.loads(args.child or args.prepare)
        set_threads(job["threads"])
        found = child(job) if args.child else prepare(job["requests"], job["seed"], Path(job["folder"]))
        print(json.dumps(found), flush=True)
        return 0
    from cachebench.errors import UsageError
    from cachebench.paths import cache_dir
    from cachebench.semantic.servers import redis_server

    folder = args.vectors or cache_dir() / "semantic_scale"
    results: list[dict[str, Any]] = []
    notes: list[str] = []
    for requests in args.sizes:
        ready = in_child("--prepare", {"requests": requests, "seed": args.seed, "folder": str(folder),
                                       "threads": args.threads})
        if "error" in ready:
            notes.append(f"{requests:,} requests: could not embed the stream ({ready['error']})")
            continue
        notes.append(f"{requests:,} requests: {ready['distinct']:,} distinct prompts, embedded at "
                     f"{ready['ms_per_text']:.2f} ms per text (ready in {ready['ready_s']:.0f} s)")
        for store in args.store_list:
            try:
                server = redis_server(None) if store == "redis" else None
                url = server.__enter__() if server is not None else ""
            except UsageError as exc:
                notes.append(f"store=redis skipped: {exc}")
                continue
            try:
                for index in args.index_list:
                    job = {"requests": requests, "index": index, "store": store, "seed": args.seed,
                           "vectors": ready["stem"], "redis_url": url, "threads": args.threads}
                    results.append(in_child("--child", job))
                    print(render(results[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
            finally:
                if server is not None:
                    server.__exit__(None, None, None)
    machine = next((result["hardware"] for result in results if "hardware" in result), "this machine")
    print(f"{TASK}, threshold 0.8, seed {args.seed}, embedding precomputed, on {machine}")
    for note in notes:
        print(f"  {note}")
    print()
    print(render(results))
    if args.json:
        args.json.write_text(json.dumps({"notes": notes, "results": results}, indent=1))
    return 1 if any("error" in result for result in results) or not results else 0


# --- a child: one run, then the bulk build of its final entries ----------------------------------------------------

def checkpoint_timer() -> list[float]:
    """Seconds spent in the run writer's checkpoints (re-writing every row so far), summed."""
    from cachebench.runs import RunWriter

    spent = [0.0]
    inner = RunWriter.checkpoint

    def timed(self: RunWriter) -> None:
        begun = time.perf_counter()
        try:
            inner(self)
        finally:
            spent[0] += time.perf_counter() - begun

    RunWriter.checkpoint = timed  # type: ignore[method-assign]
    return spent


def child(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    from cachebench.provenance import hardware
    from cachebench.registry import build_method
    from cachebench.runs import EvalRequest
    from cachebench.semantic.embedder import load_embedder
    from cachebench.semantic.evaluate import run_semantic_eval
    from cachebench.taskspec import resolve_tasks

    embedder = load_embedder()
    stem = Path(job["vectors"])
    stored = json.loads(stem.with_suffix(".json").read_text())
    vectors = np.load(stem.with_suffix(".npy"), mmap_mode="r")  # file-backed: the run's own copy is the one counted
    embedder.remember = True  # the runner's precomputed embedding finds every prompt here: no encode
    ms = stored["ms_per_text"]
    embedder._memo.update((text, (vector, ms)) for text, vector in zip(stored["texts"], vectors, strict=True))
    del stored
    params = [f"index={job['index']}", f"store={job['store']}"]
    if job["redis_url"]:
        params.append(f"redis_url={job['redis_url']}")
    method = build_method("threshold", params)
    inserted = entry_vectors(method)
    spent = checkpoint_timer()
    with tempfile.TemporaryDirectory() as out:
        request = EvalRequest(method="threshold", task=TASK, params=tuple(params), seed=job["seed"],
                              requests=job["requests"], embedding="precomputed", llm_cost="800", out=Path(out))
        begun = time.perf_counter()
        outcome = run_semantic_eval(request, resolve_tasks(TASK), method, embedder=embedder)
        wall = time.perf_counter() - begun
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    rows = outcome.rows
    if len(rows) != job["requests"]:
        raise SystemExit(f"the run made {len(rows)} rows, not {job['requests']}: this checkout's eval does not "
                         "pass --requests to the task's builder")
    failed = [row for row in rows if row["error"]]
    if failed:
        raise SystemExit(f"{len(failed)} rows failed, e.g. {failed[0]['error']}")
    lookups = np.array([row["lookup_ms"] for row in rows], dtype=np.float64)
    scored = [row for row in rows if not row["warmup"]]
    return {
        **{key: job[key] for key in ("requests", "index", "store")},
        "entries": rows[-1]["cache_entries"],
        "hit_rate": float(np.mean([row["hit"] for row in scored])),
        "wrong_rate": float(np.mean([row["score"] == 0 for row in scored])),
        "lookup_p50_ms": float(np.percentile(lookups, 50)),
        "lookup_p99_ms": float(np.percentile(lookups, 99)),
        "bytes_per_entry": rows[-1]["cache_bytes"] / max(1, rows[-1]["cache_entries"]),
        "build_s": bulk_build(job["index"], np.stack(inserted)),
        "peak_rss_gb": peak,
        "wall_s": wall,
        "checkpoint_s": spent[0],
        "hardware": hardware(torch.device("cpu")),
    }


def entry_vectors(method: Any) -> list[np.ndarray]:
    """The vector of every entry `method` inserts, gathered as it goes (threshold never evicts, so these are the
    final entries): what the bulk build is timed on."""
    found: list[np.ndarray] = []
    inner = method.record_miss

    def record_miss(query: Any, response: str, decision: Any) -> int | None:
        key = inner(query, response, decision)
        if key is not None and query.embedding is not None:
            found.append(query.embedding)
        return key

    method.record_miss = record_miss
    return found


def bulk_build(index: str, vectors: np.ndarray) -> float:
    """Seconds to build a fresh index of this kind from `vectors` in one add, one thread, the method defaults."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if index == "hnsw":
        import hnswlib

        built = hnswlib.Index(space="ip", dim=vectors.shape[1])
        begun = time.perf_counter()
        built.init_index(max_elements=len(vectors), ef_construction=200, M=16)
        built.add_items(vectors, np.arange(len(vectors)), num_threads=1)
        return time.perf_counter() - begun
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        built = faiss.IndexHNSWFlat(vectors.shape[1], 16, faiss.METRIC_INNER_PRODUCT)
        built.hnsw.efConstruction = 200
        begun = time.perf_counter()
        built.add(vectors)
        return time.perf_counter() - begun
    finally:
        faiss.omp_set_num_threads(threads)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
