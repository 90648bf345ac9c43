"""`cachebench perf` cells as result rows of the shared schema (cachebench.results), so `show`, `leaderboard` and
`gate` read them with eval's rows.

One row per timed repeat of a (method, parameters, context length) cell: track, task and mode `perf`, the repeat's
index as `episode_id` (the bootstrap's unit, so readers can put an interval on the times), turn 0, no score.
Columns that only the table and `--json` carry (floors, static decode at the batch) have no column here.
"""

from __future__ import annotations

import math
from typing import Any

from cachebench.perf.measure import PerfRow

TASK = "perf"
MODE = "perf"
COMPRESSION = "query-agnostic"  # the context is compressed before any question, as eval's default


def cell_rows(identity: dict[str, Any], subtask: str, row: PerfRow, decode_steps: int) -> list[dict[str, Any]]:
    """A measured cell's rows, one per timed repeat; `identity` is run_identity's columns for the cell's method.
    A repeat generated the first token and `decode_steps` more."""
    return [_row(identity, subtask, row.context, index, {
        "kv_bytes": row.kv_bytes,
        "peak_mem_bytes": row.peak_mem_bytes,
        "peak_kv_bytes": row.peak_kv_bytes,
        "prefill_ms": repeat.prefill_ms,
        "ttft_ms": repeat.ttft_ms,
        "decode_ms_per_token": repeat.decode_ms_per_token,
        "output_tokens": decode_steps + 1,
        "error": None,
    }) for index, repeat in enumerate(row.repeats)]


def failed_rows(identity: dict[str, Any], subtask: str, context: int, repeats: int,
                error: str) -> list[dict[str, Any]]:
    """The rows a cell that raised (out of memory) would have had, marked with the error and nothing measured."""
    nan = math.nan
    return [_row(identity, subtask, context, index, {
        "kv_bytes": None, "peak_mem_bytes": None, "peak_kv_bytes": None, "prefill_ms": nan, "ttft_ms": nan,
        "decode_ms_per_token": nan, "output_tokens": 0, "error": error,
    }) for index in range(repeats)]


def _row(identity: dict[str, Any], subtask: str, context: int, index: int,
         measured: dict[str, Any]) -> dict[str, Any]:
    return {
        **identity,
        "track": "perf",
        "task": TASK,
        "subtask": subtask,
        "mode": MODE,
        "compression": COMPRESSION,
        "context_length": context,
        "truncation": "none",
        "episode_id": str(index),
        "turn": 0,
        "category": "",
        "prediction": "",
        "references": [],
        "metric": None,
        "score": None,
        "context_tokens": context,
        "prompt_tokens": 0,
        "truncated_tokens": 0,
        "reused_tokens": 0,
        "recomputed_tokens": 0,
        **measured,  # request_ttft_ms: cachebench.derived fills it from ttft_ms, which already holds the prefill
    }
