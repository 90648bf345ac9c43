"""Running a sweep's shards one after another in one process, keeping the loaded model (and embedder) between
cells: what the local executor does in the sweep's own process and what each Ray worker does in its actor."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cachebench import provenance
from cachebench.errors import RunInterrupted
from cachebench.runs import EvalRequest, ProgressSink, Silent
from cachebench.sweep.grid import Cell
from cachebench.sweep.state import CELLS


@dataclass
class ShardResult:
    """What one attempt at one shard did (picklable: a Ray worker returns it)."""

    run_id: str
    state: str  # done, failed
    rows: int  # rows in the shard's file
    new_rows: int  # rows computed by this attempt (the rest were kept from a checkpoint)
    errors: int
    seconds: float
    mean_score: float | None
    worker: str  # host:pid that ran it
    error: str | None = None

    def record(self) -> dict[str, Any]:
        """The manifest's entry for this attempt."""
        return {"state": self.state, "rows": self.rows, "new_rows": self.new_rows, "errors": self.errors,
                "seconds": round(self.seconds, 2), "mean_score": self.mean_score, "worker": self.worker,
                "error": self.error, "finished_at": provenance.utc_now().isoformat(timespec="seconds")}


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class ShardRunner:
    """Runs shards of a sweep into `out`/cells, loading each model once for as long as its cells keep coming."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self._model: tuple[tuple[Any, ...], Any] | None = None
        self._embedder: tuple[tuple[Any, ...], Any] | None = None

    def run(self, cell: Cell, index: int, progress: ProgressSink | None = None) -> ShardResult:
        """Run (or continue) shard `index` of `cell`. A failure is a `failed` result, never an exception, except
        Ctrl-C / SIGTERM (RunInterrupted, KeyboardInterrupt), which stop the sweep."""
        started, begun = provenance.utc_now(), time.monotonic()
        request = cell.request(self.out / CELLS, index)
        try:
            outcome = self._run(request, progress or Silent())
        except (RunInterrupted, KeyboardInterrupt):
            raise
        except Exception as exc:  # a model that will not load, a method that cannot attach, a store that is gone
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
            return ShardResult(request.run_id or "", "failed", 0, 0, 0, time.monotonic() - begun, None,
                               worker_name(), reason)
        rows = outcome.rows
        scores = [row["score"] for row in rows if row.get("score") is not None and not row.get("warmup")]
        new = sum(1 for row in rows if _newer(row.get("created_at"), started))
        error = outcome.problem or next((row["error"] for row in rows if row.get("error")), None)
        state = "failed" if outcome.errors or outcome.problem or error else "done"
        return ShardResult(request.run_id or "", state, len(rows), new, outcome.errors, time.monotonic() - begun,
                           sum(scores) / len(scores) if scores else None, worker_name(), error)

    def _run(self, request: EvalRequest, progress: ProgressSink) -> Any:
        from cachebench.registry import build_method, method_track

        if method_track(request.method) == "kv":
            from cachebench.eval_run import run_eval

            return run_eval(request, progress, model=self._loaded_model(request))
        from cachebench.semantic.evaluate import run_semantic_eval
        from cachebench.taskspec import resolve_tasks

        method = build_method(request.method, list(request.params))
        return run_semantic_eval(request, resolve_tasks(request.task), method, progress,
                                 embedder=self._loaded_embedder(request))

    def _loaded_model(self, request: EvalRequest) -> Any:
        key = (request.model, request.dtype, request.device, request.attn_impl, request.model_args)
        if self._model is None or self._model[0] != key:
            from cachebench.models.loading import load_model

            self._model = None  # the previous model is released before the next one loads
            self._model = (key, load_model(request.model, request.dtype, request.device, request.attn_impl,
                                           request.model_args))
        return self._model[1]

    def _loaded_embedder(self, request: EvalRequest) -> Any:
        from cachebench.models.loading import resolve_device

        key = (request.embedder, str(resolve_device(request.device)))
        if self._embedder is None or self._embedder[0] != key:
            from cachebench.semantic.embedder import load_embedder

            self._embedder = None
            self._embedder = (key, load_embedder(*key))
        return self._embedder[1]


def _newer(created: datetime | None, started: datetime) -> bool:
    return created is not None and created >= started
