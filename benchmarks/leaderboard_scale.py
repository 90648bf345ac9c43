"""How long the leaderboard takes on a million result rows: aggregation and page rendering, timed apart.

Generates `--rows` synthetic rows of the real Parquet schema (KV rows of several task families, methods and
parameter settings on two models, one of them random weights, and semantic-cache rows of threshold sweeps), writes
them as one Parquet file per task, then times `aggregate` (reading included) and `render` (the HTML page) and
prints a Markdown table. The requirement is under 10 s in total on a 2-core machine.

    .venv/bin/python benchmarks/leaderboard_scale.py                  # one million rows
    .venv/bin/python benchmarks/leaderboard_scale.py --rows 100000   # a quick look

A second line reads the same files together with a copy of them (every item held twice, as a folder holding each
run twice): the cells must be the same, and the time shows what counting each item once costs at its worst.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cachebench.results import SCHEMA

KV_TASKS = {
    "multiturn": ["passkey", "kv", "qa", "vt", "prefix_suffix", "scbench_kv", "scbench_qa_eng", "scbench_mf"],
    "rag": ["passages", "2wikimqa", "musique", "samsum"],
}
# method -> (parameter name, values, quality kept at the smallest setting)
EVICTION = {"snapkv": ("ratio", [0.1, 0.25, 0.5, 0.75]), "pyramidkv": ("ratio", [0.1, 0.25, 0.5, 0.75]),
            "streamingllm": ("window", [256, 512, 1024, 2048]), "h2o": ("ratio", [0.1, 0.25, 0.5, 0.75])}
REUSE = {"cacheblend": ("recompute_ratio", [0.05, 0.15, 0.3]), "prefix": ("block_tokens", [64]),
         "kvlink": ("chunk_tokens", [256])}
KV_MODELS = [("SmolLM2-135M-Instruct", "pretrained"), ("meta-llama/Llama-3.1-8B-Instruct", "pretrained"),
             ("llama-3.1-8b", "random")]
SEMANTIC_TASKS = ["stream", "contextual", "sembenchmark", "qqp", "paws"]
SEMANTIC = {"threshold": ("threshold", [0.7, 0.75, 0.8, 0.85, 0.9, 0.95]), "vcache": ("delta", [0.01, 0.02, 0.05]),
            "meancache": ("threshold", [0.8, 0.83, 0.9]), "category-aware": ("candidates", [4]),
            "exact": ("candidates", [4])}
EMBEDDERS = ["all-MiniLM-L6-v2", "bge-small-en", "e5-base-v2"]
CATEGORIES = ["code", "conversation", "factual", "time-sensitive"]
OUTCOMES = np.array(["TP", "FP", "FN", "TN"])


def _strings(codes: np.ndarray, values: list[str]) -> pa.Array:
    """A string column from per-row indices into `values` (built as a dictionary array: no Python loop)."""
    return pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()), pa.array(values, pa.string())).cast(pa.string())


def _kv_cells() -> list[dict]:
    cells = []
    for family, subtasks in KV_TASKS.items():
        mode = "multi-turn" if family == "multiturn" else "multi-request"
        for subtask in subtasks:
            for model, weights in KV_MODELS:
                settings = [("full", {}, 1.0, 1.0)]
                for method, (name, values) in EVICTION.items():
                    settings += [(method, {name: v}, v if v < 1 else v / 4096, 1.0) for v in values]
                if family == "rag":
                    for method, (name, values) in REUSE.items():
                        settings += [(method, {name: v}, 1.0, 0.3 + (v if v < 1 else 0.1)) for v in values]
                for method, params, keep, ttft in settings:
                    cells.append(dict(family=family, task=f"{family}.{subtask}", subtask=subtask, mode=mode,
                                      method=method, params=json.dumps(params, sort_keys=True, separators=(",", ":")),
                                      model=model, weights=weights, keep=keep, ttft=ttft))
    return cells


def _semantic_cells() -> list[dict]:
    return [dict(task=f"semantic.{task}", subtask=task, method=method,
                 params=json.dumps({name: value}, sort_keys=True, separators=(",", ":")), model=model,
                 strictness=(value if name == "threshold" else 0.85))
            for task in SEMANTIC_TASKS for model in EMBEDDERS
            for method, (name, values) in SEMANTIC.items() for value in values]


def _common(n: int, cell_of_row: np.ndarray, cells: list[dict], rng: np.random.Generator) -> dict[str, pa.Array]:
    """Run identity and provenance columns: one run per cell."""
    runs = [f"20260101T{i // 3600 % 24:02d}{i // 60 % 60:02d}{i % 60:02d}Z-{i:06x}" for i in range(len(cells))]
    start = datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1e6
    created = (start + np.arange(len(cells)) * 3.6e9)[cell_of_row].astype("int64")
    return {
        "run_id": _strings(cell_of_row, runs),
        "created_at": pa.array(created, pa.timestamp("us", tz="UTC")),
        "cachebench_version": _strings(np.zeros(n, int), ["0.1.0"]),
        "git_sha": _strings(cell_of_row % 3, ["1a2b3c4", "5d6e7f8", "9a8b7c6-dirty"]),
        "seed": pa.array(np.zeros(n, "int64")),
        "task": _strings(cell_of_row, [c["task"] for c in cells]),
        "subtask": _strings(cell_of_row, [c["subtask"] for c in cells]),
        "method": _strings(cell_of_row, [c["method"] for c in cells]),
        "method_params": _strings(cell_of_row, [c["params"] for c in cells]),
        "model": _strings(cell_of_row, [c["model"] for c in cells]),
        "dtype": _strings(np.zeros(n, int), ["bfloat16"]),
        "device": _strings(np.zeros(n, int), ["cuda"]),
        "hardware": _strings(rng.integers(0, 2, n) * 0, ["NVIDIA H100 80GB HBM3, 79.1 GiB"]),
        "attn_impl": _strings(np.zeros(n, int), ["sdpa"]),
        "timer": _strings(np.zeros(n, int), ["cuda-sync+perf_counter"]),
        "truncation": _strings(np.zeros(n, int), ["none"]),
    }


def kv_table(rows: int, rng: np.random.Generator) -> pa.Table:
    """KV rows: each cell runs the same episodes (10 turns each), so ratios to `full` match item by item."""
    cells = _kv_cells()
    turns = 10
    episodes = max(1, rows // (len(cells) * turns))
    per_cell = episodes * turns
    n = per_cell * len(cells)
    cell_of_row = np.repeat(np.arange(len(cells)), per_cell)
    position = np.tile(np.arange(per_cell), len(cells))
    episode, turn = position // turns, position % turns
    keep = np.array([c["keep"] for c in cells])[cell_of_row]
    ttft_share = np.array([c["ttft"] for c in cells])[cell_of_row]
    random_weights = np.array([c["weights"] == "random" for c in cells])[cell_of_row]
    quality = np.clip(0.35 + 0.55 * np.sqrt(keep) + rng.normal(0, 0.2, n), 0, 1)
    score = np.where(random_weights, 0.0, quality)
    failed = rng.random(n) < 0.002
    context = rng.integers(2000, 8000, episodes)[episode]
    kv_bytes = (context * 73728 * keep).astype("int64")
    prefill = context * 0.05 * ttft_share
    ttft = 20 + rng.gamma(4, 2, n)
    columns = _common(n, cell_of_row, cells, rng)
    columns |= {
        "mode": _strings(cell_of_row, [c["mode"] for c in cells]),
        "compression": _strings(np.zeros(n, int), ["query-agnostic"]),
        "model_weights": _strings(cell_of_row, [c["weights"] for c in cells]),
        "episode_id": _strings(episode, [f"ep{e:05d}" for e in range(episodes)]),
        "turn": pa.array(turn.astype("int32")),
        "category": _strings(turn % 4, ["depth-0", "depth-25", "depth-50", "depth-75"]),
        "prediction": _strings(turn % 3, ["The pass key is 71432.", "Paris", "I do not know."]),
        "references": pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype="int32")),
                                               _strings(turn % 2, ["71432", "Paris"])),
        "metric": _strings(np.zeros(n, int), ["qa_f1"]),
        "score": pa.array(np.where(failed, np.nan, score)),
        "context_tokens": pa.array(context.astype("int64")),
        "prompt_tokens": pa.array(np.full(n, 40, "int64")),
        "output_tokens": pa.array(np.full(n, 12, "int64")),
        "truncated_tokens": pa.array(np.zeros(n, "int64")),
        "reused_tokens": pa.array(((1 - ttft_share) * context).astype("int64")),
        "recomputed_tokens": pa.array(np.zeros(n, "int64")),
        "kv_bytes": pa.array(kv_bytes),
        "peak_mem_bytes": pa.array(kv_bytes * 2),
        "prefill_ms": pa.array(prefill),
        "ttft_ms": pa.array(ttft),
        "decode_ms_per_token": pa.array(rng.gamma(9, 1, n)),
        "error": pa.array(np.where(failed, "RuntimeError: CUDA out of memory", None), pa.string()),
    }
    return _to_schema(columns, n)


def semantic_table(rows: int, rng: np.random.Generator) -> pa.Table:
    """Semantic rows: stricter settings hit less and err less; a tenth of each stream is warm-up."""
    cells = _semantic_cells()
    sizes = np.full(len(cells), rows // len(cells))
    sizes[: rows % len(cells)] += 1  # exactly `rows` rows
    n = int(sizes.sum())
    cell_of_row = np.repeat(np.arange(len(cells)), sizes)
    turn = np.arange(n) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    per_cell = int(sizes.max())
    strictness = np.array([c["strictness"] for c in cells])[cell_of_row]
    category = rng.integers(0, len(CATEGORIES), n)
    hit = rng.random(n) < (1.2 - strictness) * 1.5 - 0.05 * category
    wrong = rng.random(n) < (1.0 - strictness) * 0.4
    outcome = np.where(hit, np.where(wrong, 1, 0), np.where(rng.random(n) < 0.3, 2, 3))
    stale = hit & ~wrong & (category == 3) & (rng.random(n) < 0.2)
    lookup = rng.lognormal(-3, 0.5, n)
    columns = _common(n, cell_of_row, cells, rng)
    columns |= {
        "mode": _strings(np.zeros(n, int), ["stream"]),
        "compression": pa.nulls(n, pa.string()),
        "model_weights": _strings(np.zeros(n, int), ["pretrained"]),
        "episode_id": _strings(turn, [f"r{t:05d}" for t in range(per_cell)]),
        "turn": pa.array(turn.astype("int32")),
        "category": _strings(category, CATEGORIES),
        "prediction": _strings(np.where(hit, 1, 0), ["", "The capital of France is Paris."]),
        "references": pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype="int32")),
                                               _strings(np.zeros(n, int), ["The capital of France is Paris."])),
        "metric": _strings(np.zeros(n, int), ["semantic_outcome"]),
        "score": pa.array(np.where((outcome == 1) | stale, 0.0, 1.0)),
        "hit": pa.array(hit),
        "outcome": _strings(outcome, list(OUTCOMES)),
        "similarity": pa.array(rng.random(n)),
        "lookup_ms": pa.array(lookup),
        "stale": pa.array(stale),
        "user": _strings(turn % 8, [f"u{u}" for u in range(8)]),
        "class_id": _strings(turn % 500, [f"class-{c}" for c in range(500)]),
        "served_class": _strings(turn % 500, [f"class-{c}" for c in range(500)]),
        "warmup": pa.array(turn < sizes[cell_of_row] // 10),
        "embed_ms": pa.array(np.full(n, 1.9)),
        "fetch_ms": pa.array(np.where(hit, 0.01, np.nan)),
        "llm": _strings(np.zeros(n, int), ["SmolLM2-135M-Instruct"]),
        "llm_ms": pa.array(np.full(n, 800.0)),
        "cache_entries": pa.array(turn.astype("int64")),
        "cache_bytes": pa.array(turn.astype("int64") * 2048),
    }
    return _to_schema(columns, n)


def _to_schema(columns: dict[str, pa.Array], n: int) -> pa.Table:
    """The columns as a table of the current schema, the derived ones (track, cell_params, request TTFT) filled in as
    the writer fills them."""
    from cachebench.derived import derive

    arrays = [columns[f.name] if f.name in columns else pa.nulls(n, f.type) for f in SCHEMA]
    return derive(pa.Table.from_arrays(arrays, schema=SCHEMA))


def write_files(rows: int, folder: Path, seed: int = 0) -> list[Path]:
    """Three quarters KV rows, a quarter semantic rows, one Parquet file per task."""
    rng = np.random.default_rng(seed)
    paths = []
    kv = kv_table(rows * 3 // 4, rng)
    for table in (kv, semantic_table(rows - kv.num_rows, rng)):
        tasks = table["task"].unique().to_pylist()
        for task in tasks:
            path = folder / f"{task}.parquet"
            pq.write_table(table.filter(pc.equal(table["task"], task)), path)
            paths.append(path)
    return paths


def _line(board: Any, aggregate_s: float, render_s: float, page: Path) -> str:
    cells = len(board.kv) + len(board.semantic)
    return (f"| {board.rows:,} | {len(board.sources)} | {cells:,} ({len(board.kv):,} + {len(board.semantic):,}) "
            f"| {aggregate_s:.2f} | {render_s:.2f} | {aggregate_s + render_s:.2f} | "
            f"{page.stat().st_size / 2**20:.1f} MiB |")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path, help="also leave the generated files and the page here")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    from cachebench.leaderboard.aggregate import aggregate
    from cachebench.leaderboard.site import render_site

    imported = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or Path(scratch)
        data, out = root / "rows", root / "site"
        data.mkdir(parents=True, exist_ok=True)
        write_files(args.rows, data)
        start = time.perf_counter()
        board = aggregate([data])
        aggregated = time.perf_counter()
        page = render_site(board, out)
        rendered = time.perf_counter()
        print("| rows | files | cells (KV + semantic) | aggregate s | render s | total s | page size |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        print(_line(board, aggregated - start, rendered - aggregated, page))
        copy = root / "copy"
        shutil.copytree(data, copy, dirs_exist_ok=True)
        start = time.perf_counter()
        twice = aggregate([data, copy])
        aggregated = time.perf_counter()
        page = render_site(twice, root / "site-twice")
        rendered = time.perf_counter()
        print(_line(twice, aggregated - start, rendered - aggregated, page) + " (every item twice)")
        same = len(board.kv) == len(twice.kv) and all(
            a.n == b.n and np.allclose([a.score, a.low, a.high], [b.score, b.low, b.high], rtol=1e-12, equal_nan=True)
            for a, b in zip(board.kv, twice.kv, strict=True))  # equal up to the order DuckDB sums in
        print(f"\nThe copy changes no cell: {same}. Importing the leaderboard (duckdb, jinja2) took {imported:.2f} s "
              "more.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
