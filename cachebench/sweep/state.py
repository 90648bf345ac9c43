"""Where a sweep's results live and what state each shard is in, read from the files themselves.

    OUT/_sweep.json                       the sweep as written, its cells, and what each shard's last attempt did
    OUT/cells/<stem>[.sI-N].parquet       one file per (cell, shard), named by the cell's stable key

A shard is `done` when its file is a finished run without error rows, `partial` when its file is a checkpoint
(a killed or interrupted run), `failed` when its rows hold errors or its last attempt raised, and `pending` when
it has no file. The files decide, not the manifest: a sweep killed with SIGKILL never wrote its last words, and
its status is still right.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cachebench import __version__, provenance
from cachebench.errors import UsageError
from cachebench.sweep.grid import Cell, Sweep

CELLS = "cells"
MANIFEST = "_sweep.json"  # "_": pandas and pyarrow folder reads skip it beside the rows
STATES = ("done", "partial", "failed", "pending")


@dataclass(frozen=True)
class Shard:
    """Shard `index` of cell number `cell_index` of a sweep: the unit a worker runs."""

    cell_index: int
    cell: Cell
    index: int

    @property
    def run_id(self) -> str:
        return self.cell.run_id(self.index)

    def path(self, out: Path) -> Path:
        return out / CELLS / f"{self.run_id}.parquet"

    def label(self) -> str:
        part = f" [shard {self.index}/{self.cell.shards}]" if self.cell.shards > 1 else ""
        return f"{self.cell.label()}{part}"


def shards(sweep: Sweep) -> Iterator[Shard]:
    for cell_index, cell in enumerate(sweep.cells):
        for index in range(cell.shards):
            yield Shard(cell_index, cell, index)


@dataclass(frozen=True)
class ShardState:
    shard: Shard
    state: str  # one of STATES
    rows: int = 0
    planned: int = 0
    errors: int = 0
    message: str | None = None  # why the last attempt failed, from the manifest


def read_manifest(out: Path) -> dict[str, Any]:
    """The manifest, or {} when there is none (a sweep not started, or killed before its first write)."""
    path = out / MANIFEST
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: not a readable sweep manifest ({exc})") from None


def shard_state(shard: Shard, out: Path, manifest: dict[str, Any]) -> ShardState:
    import pyarrow.parquet as pq  # lazily: the CLI imports this module

    from cachebench.results import RUN_STATE_KEY

    recorded = manifest.get("shards", {}).get(shard.run_id, {})
    message = recorded.get("error") if recorded.get("state") == "failed" else None
    path = shard.path(out)
    if not path.exists():
        return ShardState(shard, "failed" if message else "pending", message=message)
    try:
        metadata = pq.read_metadata(path)
        run = json.loads((metadata.metadata or {}).get(RUN_STATE_KEY, b"{}"))
        errors = pq.read_table(path, columns=["error"]).column("error").drop_null()
    except (OSError, ValueError) as exc:
        return ShardState(shard, "failed", message=f"{path}: not readable ({exc})")
    rows, planned = metadata.num_rows, int(run.get("planned_rows", metadata.num_rows))
    if len(errors):
        return ShardState(shard, "failed", rows, planned, len(errors), message or str(errors[0]))
    if not run.get("complete", False):
        return ShardState(shard, "partial", rows, planned, 0, message)
    return ShardState(shard, "done", rows, planned)


def sweep_states(sweep: Sweep, out: Path) -> list[ShardState]:
    manifest = read_manifest(out)
    return [shard_state(shard, out, manifest) for shard in shards(sweep)]


def check_out(sweep: Sweep, out: Path) -> None:
    """Refuse an --out holding result files that are not this sweep's shards: `show` and `gate` read every
    Parquet file under a folder, so another run's rows would be mixed into this sweep's numbers."""
    from cachebench.runs import check_output_dir

    if out.exists() and out.is_dir():
        mine = {shard.path(out).resolve() for shard in shards(sweep)}
        for found in sorted(out.rglob("*.parquet")):
            if not found.name.startswith(".") and found.resolve() not in mine:
                raise UsageError(f"--out {out}: holds {found.relative_to(out)}, which is not a cell of this sweep "
                                 "(a sweep's folder holds its own cells only; pick another --out or move it)")
    check_output_dir(out)
    (out / CELLS).mkdir(parents=True, exist_ok=True)


def sweep_from_manifest(out: Path) -> Sweep:
    """The sweep a folder was run with, from the copy of its file the manifest keeps."""
    from cachebench.sweep.grid import parse_sweep

    manifest = read_manifest(out)
    if not manifest:
        raise UsageError(f"{out}: no {MANIFEST} (not a sweep folder, or the sweep never started)")
    return parse_sweep(manifest["text"], manifest.get("origin", str(out / MANIFEST)), manifest.get("sweep", "sweep"))


def write_manifest(sweep: Sweep, out: Path, attempts: dict[str, dict[str, Any]], started: str,
                   executor: str) -> None:
    """The manifest, atomically: the sweep as written, its cells, each shard's last attempt."""
    previous = read_manifest(out).get("shards", {})
    manifest = {
        "sweep": sweep.name,
        "summary": sweep.summary,
        "origin": sweep.origin,
        "text": sweep.text,
        "cachebench_version": __version__,
        "git_sha": provenance.git_sha(),
        "started_at": started,
        "updated_at": provenance.utc_now().isoformat(timespec="seconds"),
        "executor": executor,
        "cells": [{**cell.as_dict(), "run_ids": [cell.run_id(i) for i in range(cell.shards)]}
                  for cell in sweep.cells],
        "shards": {**previous, **attempts},
    }
    temporary = out / f".{MANIFEST}.{os.getpid()}.tmp"
    temporary.write_text(json.dumps(manifest, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(temporary, out / MANIFEST)
