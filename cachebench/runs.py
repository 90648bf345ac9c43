"""What every `cachebench eval` run shares, whichever track it runs: the request, the outcome, progress
reporting, the checks of the output folder before any work, and the writer that keeps every finished row
whatever happens to the run or the disk."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cachebench import __version__, provenance
from cachebench.errors import UsageError
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
    include_path: tuple[str, ...] = ()  # folders of the user's own task YAMLs (--include-path)
    model_args: tuple[str, ...] = ()  # key=value settings passed to the model's from_pretrained (--model-args)
    # semantic track only (a KV task refuses them in one line)
    pair_protocol: str | None = None  # pair tasks: retrieval or pairwise (None: the task's own)
    embedding: str = "online"  # online: each request embedded as it arrives; precomputed: one batch up front
    embed_batch: int = 1  # online mode: requests embedded together, as a serving system's micro-batch
    requests: int | None = None  # generated semantic tasks: requests (pairs) to generate (None: the task's)
    # sharding and stable identity (sweeps): run shard I of N of each task's episodes; with `run_id`, the file is
    # OUT/<run_id>.parquet and a partial file of that id is continued (its finished episodes kept, not rerun)
    shard: tuple[int, int] | None = None
    run_id: str | None = None


@dataclass
class EvalOutcome:
    path: Path | None  # where the rows were written (a fallback folder when --out refused them)
    rows: list[dict[str, Any]]
    errors: int
    problem: str | None = None  # the rows could not be written where asked (see RunWriter)
    warnings: list[str] | None = None  # what the run noticed and repaired (e.g. damaged store blocks)


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


class RunWriter:
    """Writes a run's rows to `path`, never losing one.

    While the run goes on the file is re-written now and then as a checkpoint marked partial (`run_complete`
    false, `run_planned` rows planned), so a killed run leaves a file that says so. A write that fails (disk
    full, folder gone) keeps the rows in memory with one warning, and the next checkpoint tries again. The final
    write retries, then falls back to another folder (`CACHEBENCH_FALLBACK_DIR`, the user cache, the temporary
    folder) and says where in `problem`.
    """

    RETRIES = 3

    def __init__(self, path: Path, rows: list[dict[str, Any]], planned: int, interval: float = 30.0) -> None:
        self.path, self.rows, self.planned = path, rows, planned
        self.interval = float(os.environ.get("CACHEBENCH_CHECKPOINT_SECONDS", interval))
        self.problem: str | None = None  # why the rows are not (only) at `path`, for the final message
        self._last = time.monotonic()
        self._write_seconds = 0.0  # how long the last checkpoint took
        self._warned = False

    def maybe(self) -> None:
        """A checkpoint when the interval has passed since the last one, and at least four times as long as the
        last checkpoint took: each checkpoint re-writes every row, so a short interval on a long run would
        otherwise spend most of its time writing (the wait keeps writing under a fifth of the run)."""
        if time.monotonic() - self._last >= max(self.interval, 4 * self._write_seconds):
            self.checkpoint()

    def checkpoint(self) -> None:
        started = time.monotonic()
        if self.rows:
            self._try(self.path, complete=False)
        self._last = time.monotonic()
        self._write_seconds = self._last - started

    def finish(self, complete: bool) -> Path | None:
        """The final write: where the rows are (None when there are none, or when no folder would take them).
        The rows themselves are stamped with the run's completeness, so a file that gathers them later (a
        benchmark's) keeps it."""
        if not self.rows:
            return None
        for row in self.rows:
            row["run_planned"], row["run_complete"] = self.planned, complete
        for attempt in range(self.RETRIES):
            error = self._try(self.path, complete)
            if error is None:
                return self.path
            if attempt + 1 < self.RETRIES:
                time.sleep(0.5 * (attempt + 1))
        reasons = [f"{self.path.parent}: {error}"]
        for folder in fallback_dirs():
            target = folder / self.path.name
            if target.resolve() == self.path.resolve():
                continue
            failed = self._try(target, complete, warn=False)
            if failed is None:
                self.problem = f"could not write {self.path} ({error}); all {len(self.rows)} rows are in {target}"
                return target
            reasons.append(f"{folder}: {failed}")
        self.problem = f"could not write the {len(self.rows)} rows anywhere ({'; '.join(reasons)})"
        return None

    def _try(self, path: Path, complete: bool, warn: bool = True) -> str | None:
        """Write all rows to `path`; the failure's reason, or None."""
        from cachebench.results import write_atomic  # pyarrow, lazily: the CLI imports this module

        try:
            write_atomic(self.rows, path, planned=self.planned, complete=complete)
        except Exception as exc:  # OSError, pyarrow's own errors: the rows stay in memory either way
            reason = _reason(exc)
            if warn and not self._warned:
                self._warned = True
                print(f"warning: cannot write {path} ({reason}); the rows stay in memory and the write is retried",
                      file=sys.stderr)
            return reason
        return None


def _reason(exc: BaseException) -> str:
    """Why a write failed, in the words of the OS (pyarrow only puts the errno inside its message)."""
    found = re.search(r"\[errno (\d+)\]", str(exc))
    if found:
        return os.strerror(int(found[1]))
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def fallback_dirs() -> list[Path]:
    """Where the final write goes when `--out` refuses it, in order of preference."""
    found = []
    if os.environ.get("CACHEBENCH_FALLBACK_DIR"):
        found.append(Path(os.environ["CACHEBENCH_FALLBACK_DIR"]))
    try:
        from cachebench.paths import cache_dir

        found.append(cache_dir() / "unsaved")
    except OSError:
        pass
    found.append(Path(tempfile.gettempdir()) / "cachebench-unsaved")
    return found


_ROW_BYTES = 2048  # generous Parquet bytes per row (measured: 20-1,000 with the file's fixed overhead)
_FILE_BYTES = 1 << 20  # a file's fixed overhead and slack


def check_output_dir(out: Path) -> None:
    """Refuse, before any work, an `--out` that cannot take a file: not a folder, not creatable, read-only, full."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".cachebench-probe-", suffix=".tmp") as probe:
            probe.write(b"\0" * 65536)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        raise UsageError(f"--out {out}: not writable ({_reason(exc)})") from None


def check_room(out: Path, planned: int) -> None:
    """Refuse a run whose checkpoints would not fit: the atomic re-write holds the old and the new file at once."""
    need = 2 * (_FILE_BYTES + planned * _ROW_BYTES)
    try:
        free = shutil.disk_usage(out).free
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot check free space ({_reason(exc)})") from None
    if free < need:
        raise UsageError(f"--out {out}: {free / 2**20:.1f} MiB free, the run's {planned} rows need about "
                         f"{need / 2**20:.1f} MiB (free some space or pick another --out)")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a CI timeout, `kill`) ends a run as Ctrl-C does: the finished rows are written, marked partial."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_identity(seed: int, method: Any, run_id: str | None = None, **what_ran: Any) -> tuple[Path, dict[str, Any]]:
    """The run's id (the file name: `run_id` when the caller gives a stable one, else a new one) and the identity
    columns every row of it carries: when, which code, which seed and method, and `what_ran` (model, dtype,
    device, hardware, timer, shard, ...)."""
    created = provenance.utc_now()
    run_id = run_id or provenance.new_run_id(created)
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
