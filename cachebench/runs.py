"""What every `cachebench eval` run shares, whichever track it runs: the request, the outcome, progress
reporting, and the checkpoint that keeps finished rows when a run is killed."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cachebench import __version__, provenance
from cachebench.params import canonical_json


@dataclass(frozen=True)
class EvalRequest:
    method: str
    task: str
    params: tuple[str, ...] = ()
    model: str = "embedded"
    dtype: str = "auto"
    device: str = "auto"
    attn_impl: str = "sdpa"
    mode: str | None = None  # None: each task's own default
    golden_history: bool = False
    context_tokens: int | None = None
    limit: int | None = None  # episodes per task
    seed: int = 0
    out: Path = Path("results")
    truncate: str = "error"
    max_new_tokens: int | None = None
    data: str | None = None  # a local file in the real dataset's format, for hub-backed tasks
    compression: str = "query-agnostic"  # when a compressing method may see the question (see RunSettings)
    embedder: str = "embedded"  # semantic track: the sentence embedder (MiniLM by default)
    llm_cost: str | None = None  # semantic track: LLM cost per request in ms ("800" or "code=900,factual=400")


@dataclass
class EvalOutcome:
    path: Path | None
    rows: list[dict[str, Any]]
    errors: int


class ProgressSink(Protocol):
    def task_started(self, name: str, turns: int) -> None: ...

    def episode_started(self, index: int, total: int) -> None: ...

    def turn_done(self) -> None: ...


class Silent:
    def task_started(self, name: str, turns: int) -> None:
        pass

    def episode_started(self, index: int, total: int) -> None:
        pass

    def turn_done(self) -> None:
        pass


class Checkpointer:
    """Re-writes the run's file now and then, so a killed run keeps what it finished."""

    def __init__(self, path: Path, rows: list[dict[str, Any]]) -> None:
        self.path, self.rows, self._last = path, rows, time.monotonic()
        self.interval = float(os.environ.get("CACHEBENCH_CHECKPOINT_SECONDS", "30"))

    def maybe(self) -> None:
        if time.monotonic() - self._last >= self.interval:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            from cachebench.results import write_atomic  # pyarrow, lazily: the CLI imports this module

            write_atomic(self.rows, self.path)
        self._last = time.monotonic()




def run_identity(seed: int, method: Any, **what_ran: Any) -> tuple[Path, dict[str, Any]]:
    """A new run's id (the file name) and the identity columns every row of it carries: when, which code, which
    seed and method, and `what_ran` (model, dtype, device, hardware, timer, ...)."""
    created = provenance.utc_now()
    run_id = provenance.new_run_id(created)
    identity = {
        "run_id": run_id,
        "created_at": created,
        "cachebench_version": __version__,
        "git_sha": provenance.git_sha(),
        "seed": seed,
        "method": method.name,
        "method_params": canonical_json(method.params),
        **what_ran,
    }
    return Path(f"{run_id}.parquet"), identity
