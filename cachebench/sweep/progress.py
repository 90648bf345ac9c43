"""One view of a whole sweep, whichever executor runs it: shards done / running / failed / pending, rows and
rows per second, and an ETA. On a terminal it is a rich live line; in a log (CI, Slurm) one line per shard start
and end, which reads well where a live display would not."""

from __future__ import annotations

import sys
import time
from typing import Any

from cachebench.sweep.state import Shard
from cachebench.sweep.work import ShardResult


class SweepView:
    """Counts shards and rows; `live` draws them with rich, otherwise each event is a line on stderr."""

    def __init__(self, live: bool | None = None) -> None:
        self.live = sys.stderr.isatty() if live is None else live
        self.total = self.done = self.failed = self.kept = 0
        self.running: dict[str, str] = {}  # run_id -> label
        self.rows = 0
        self._started = time.monotonic()
        self._seconds: list[float] = []
        self._workers = 1
        self._display: Any = None
        self._turns_this_shard = 0

    # the executor's events

    def begin(self, total: int, kept: int, workers: int) -> None:
        self.total, self.kept, self._workers = total, kept, max(1, workers)
        self.done = kept
        self._started = time.monotonic()
        if self.live:
            from rich.console import Console
            from rich.live import Live

            self._display = Live(self._text(), console=Console(stderr=True), refresh_per_second=4, transient=False)
            self._display.start()
        else:
            print(f"sweep: {total} shards, {kept} already done, {total - kept} to run on {self._workers} "
                  f"worker{'s' if self._workers != 1 else ''}", file=sys.stderr, flush=True)

    def shard_started(self, shard: Shard, worker: str = "") -> None:
        self.running[shard.run_id] = shard.label()
        if self.live:
            self._draw()
        else:
            where = f" on {worker}" if worker else ""
            print(f"[{self.done + self.failed + len(self.running)}/{self.total}] {shard.label()}{where} ...",
                  file=sys.stderr, flush=True)

    def shard_done(self, shard: Shard, result: ShardResult) -> None:
        self.running.pop(shard.run_id, None)
        self._seconds.append(result.seconds)
        if result.state == "done":
            self.done += 1
        else:
            self.failed += 1
        if not self._turns_this_shard:  # executors that report no turns (Ray) count rows per shard
            self.rows += result.new_rows
        self._turns_this_shard = 0
        if self.live:
            self._draw()
        else:
            score = "-" if result.mean_score is None else f"{result.mean_score:.3f}"
            failed = f", FAILED: {result.error}" if result.state != "done" else ""
            print(f"    {shard.run_id}: {result.rows} rows ({result.new_rows} new), mean score {score}, "
                  f"{result.seconds:.1f} s{failed}", file=sys.stderr, flush=True)

    def shard_retried(self, shard: Shard, reason: str) -> None:
        self.running.pop(shard.run_id, None)
        print(f"    {shard.run_id}: worker lost ({reason}); the shard goes to another worker", file=sys.stderr,
              flush=True)

    def turn_done(self) -> None:
        self.rows += 1
        self._turns_this_shard += 1
        if self.live and self._turns_this_shard % 4 == 0:
            self._draw()

    def stop(self) -> None:
        if self._display is not None:
            self._display.update(self._text())
            self._display.stop()
            self._display = None

    # the numbers

    def eta_seconds(self) -> float | None:
        """Shards left times the mean time of the shards finished in this run, over the workers."""
        if not self._seconds:
            return None
        left = self.total - self.done - self.failed
        return left * (sum(self._seconds) / len(self._seconds)) / self._workers

    def _line(self) -> str:
        elapsed = time.monotonic() - self._started
        pending = self.total - self.done - self.failed - len(self.running)
        eta = self.eta_seconds()
        eta_text = "-" if eta is None else f"{eta / 60:.1f} min"
        rate = self.rows / elapsed if elapsed > 0 else 0.0
        running = "; ".join(list(self.running.values())[:3])
        return (f"shards: {self.done} done, {len(self.running)} running, {self.failed} failed, {pending} pending | "
                f"{self.rows} rows, {rate:.1f} rows/s | elapsed {elapsed / 60:.1f} min, ETA {eta_text}"
                + (f"\n  running: {running}" if running else ""))

    def _text(self) -> Any:
        """The line as plain text: a label such as `[shard 0/2]` is not rich markup."""
        from rich.text import Text

        return Text(self._line())

    def _draw(self) -> None:
        if self._display is not None:
            self._display.update(self._text())
