"""Running a sweep: check every cell, find what is already done in --out, run the rest with an executor, and
record each attempt. A shard's file is written by its own run (atomic re-writes, stable id), so whatever stops a
sweep — Ctrl-C, SIGKILL, a dead worker — a rerun into the same folder skips the finished shards and continues the
partial ones."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cachebench import provenance
from cachebench.errors import RunInterrupted, UsageError
from cachebench.runs import sigterm_as_interrupt
from cachebench.sweep.check import check_sweep
from cachebench.sweep.grid import Sweep
from cachebench.sweep.progress import SweepView
from cachebench.sweep.state import Shard, ShardState, check_out, shards, sweep_states, write_manifest
from cachebench.sweep.work import ShardResult, ShardRunner

EXECUTORS = ("local", "ray")


class SweepInterrupted(RunInterrupted):
    """Ctrl-C or SIGTERM stopped the sweep: finished shards are kept, the running ones left their checkpoints."""

    def __init__(self, out: Path, done: int, total: int) -> None:
        Exception.__init__(self, f"interrupted; {done} of {total} shards done in {out} (the running ones left "
                                 "checkpoints); run the same command again to continue")
        self.path, self.rows = out, done


@dataclass
class SweepOutcome:
    sweep: Sweep
    out: Path
    states: list[ShardState]  # every shard's state after the run, read from the files
    results: list[ShardResult]  # the attempts this run made
    kept: int  # shards already done before this run, not run again
    seconds: float
    startup_seconds: float = 0.0  # the executor's own start-up (Ray), apart from the work
    workers: int = 1
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[ShardState]:
        return [state for state in self.states if state.state != "done"]


class _Recorder:
    """Writes the manifest after every attempt, so `sweep status` knows why a shard failed."""

    def __init__(self, sweep: Sweep, out: Path, executor: str) -> None:
        self.sweep, self.out, self.executor = sweep, out, executor
        self.started = provenance.utc_now().isoformat(timespec="seconds")
        self.attempts: dict[str, dict[str, Any]] = {}

    def __call__(self, result: ShardResult | None = None) -> None:
        if result is not None:
            self.attempts[result.run_id] = result.record()
        write_manifest(self.sweep, self.out, self.attempts, self.started, self.executor)


def plan(sweep: Sweep, out: Path | None) -> tuple[list[ShardState], list[Shard]]:
    """(every shard's state in `out`, the shards a run would run), after checking every cell; nothing runs."""
    check_sweep(sweep, out or Path("."))
    if out is not None and out.exists():
        states = sweep_states(sweep, out)
    else:
        states = [ShardState(shard, "pending") for shard in shards(sweep)]
    return states, [state.shard for state in states if state.state != "done"]


def run_sweep(sweep: Sweep, out: Path, executor: str = "local", view: SweepView | None = None,
              address: str | None = None, workers: int | None = None) -> SweepOutcome:
    """Check every cell, then run every shard that is not done; exceptions inside a shard become failed shards
    and the sweep goes on. Ctrl-C / SIGTERM raise RunInterrupted after recording what finished."""
    if executor not in EXECUTORS:
        raise UsageError(f"--executor {executor!r}: expected one of {', '.join(EXECUTORS)}")
    if workers is not None and workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    if executor == "local" and (address is not None or workers not in (None, 1)):
        raise UsageError("--address and --workers apply to --executor ray")
    check_sweep(sweep, out)  # every cell, before the folder is touched
    if executor == "ray":
        from cachebench.sweep.ray_executor import import_ray

        import_ray()  # not installed: one line, nothing written
    check_out(sweep, out)
    before = sweep_states(sweep, out)
    todo = [state.shard for state in before if state.state != "done"]
    kept = len(before) - len(todo)
    view = view or SweepView(live=False)
    record = _Recorder(sweep, out, executor)
    record()
    started = time.monotonic()
    results: list[ShardResult] = []
    startup, count = 0.0, 1
    try:
        with sigterm_as_interrupt():  # between shards too: a CI timeout's SIGTERM stops the sweep as Ctrl-C does
            if executor == "local":
                view.begin(len(before), kept, 1)
                _run_local(todo, out, view, record, results)
            else:
                from cachebench.sweep.ray_executor import run_ray

                startup, count = run_ray(todo, out, view, record, results, address, workers, len(before), kept)
    except (RunInterrupted, KeyboardInterrupt):
        view.stop()
        record()
        done = sum(state.state == "done" for state in sweep_states(sweep, out))
        raise SweepInterrupted(out, done, len(before)) from None
    finally:
        view.stop()
    record()
    return SweepOutcome(sweep, out, sweep_states(sweep, out), results, kept, time.monotonic() - started, startup,
                        count)


def _run_local(todo: list[Shard], out: Path, view: SweepView, record: _Recorder, results: list[ShardResult]) -> None:
    """Shards one after another in this process, the model loaded once for as long as its cells last (the grid
    order keeps a model's cells together)."""
    runner = ShardRunner(out)
    sink = _TurnSink(view)
    for shard in todo:
        view.shard_started(shard)
        result = runner.run(shard.cell, shard.index, sink)
        results.append(result)
        record(result)
        view.shard_done(shard, result)


class _TurnSink:
    """A run's progress callbacks, forwarded to the sweep view's row counter."""

    def __init__(self, view: SweepView) -> None:
        self.view = view

    def task_started(self, name: str, turns: int) -> None:
        pass

    def episode_started(self, index: int, total: int) -> None:
        pass

    def turn_done(self) -> None:
        self.view.turn_done()
