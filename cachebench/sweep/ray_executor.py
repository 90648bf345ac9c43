"""The Ray executor: one long-lived worker (a Ray actor) per device, each holding its loaded model across the
cells it serves, and shards handed to whichever worker is free. Ray places the actors (one GPU each on GPU nodes,
a share of the CPUs otherwise), restarts nothing itself: a worker that dies (killed, out of host memory, its node
lost) has its shard handed to a new worker, which continues the shard from its checkpoint.

Workers write their shards' files into --out themselves, so on a cluster of several machines --out must be a
folder every node sees at the same path (a shared file system, as Slurm clusters have). Ray is an optional extra
(`pip install 'cachebench[ray]'`), imported only here.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from cachebench.errors import UsageError
from cachebench.sweep.grid import Cell
from cachebench.sweep.progress import SweepView
from cachebench.sweep.state import Shard
from cachebench.sweep.work import ShardResult, ShardRunner, worker_name

MAX_ATTEMPTS = 3  # a shard whose worker died this many times is failed, not retried forever
WORKERS_DIR = Path(".sweep") / "workers"  # under --out: one file per worker (host, pid), for people and tests


class SweepWorker:
    """A Ray actor: runs shards one at a time, keeping its model loaded between them."""

    def __init__(self, out: str) -> None:
        import torch

        cpus = os.environ.get("OMP_NUM_THREADS")  # Ray sets it to the actor's CPU share
        if cpus and cpus.isdigit() and int(cpus) > 0:
            torch.set_num_threads(int(cpus))
        self.runner = ShardRunner(Path(out))
        record = Path(out) / WORKERS_DIR / f"{worker_name().replace(':', '-')}.json"
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"worker": worker_name(), "pid": os.getpid(),
                                      "threads": torch.get_num_threads()}) + "\n", encoding="utf-8")

    def run(self, cell: Cell, index: int) -> ShardResult:
        return self.runner.run(cell, index)

    def name(self) -> str:
        return worker_name()


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError("--executor ray needs Ray: pip install 'cachebench[ray]'") from None
    return ray


def _start(ray: Any, address: str | None) -> bool:
    """Connect to the cluster at `address` (auto, ray://HOST:PORT, HOST:PORT) or start a local instance; whether
    this process started it (and so shuts it down)."""
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR, "configure_logging": True}
    if ray.is_initialized():
        return False
    try:
        if address:
            ray.init(address=address, **quiet)
            return False
        ray.init(include_dashboard=False, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UsageError(f"--address {address or '(local)'}: cannot start or reach Ray "
                         f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    return True


def _placement(ray: Any, workers: int | None) -> tuple[int, dict[str, float]]:
    """(how many workers, each one's resources): a GPU each where the cluster has GPUs, else one per node with
    that node's share of the CPUs, unless --workers says how many."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = max(1, int(resources.get("CPU", 1)))
    if gpus:
        return workers or gpus, {"num_gpus": 1, "num_cpus": 1}
    nodes = max(1, sum(1 for node in ray.nodes() if node.get("Alive")))
    count = workers or nodes
    return count, {"num_cpus": max(1, cpus // count)}


def run_ray(todo: list[Shard], out: Path, view: SweepView, record: Any, results: list[ShardResult],
            address: str | None, workers: int | None, total: int, kept: int) -> tuple[float, int]:
    """Run `todo` on Ray workers; returns (seconds Ray took to start, workers used). Every attempt's result goes
    to `record` and `results` as it arrives."""
    ray = import_ray()
    began = time.monotonic()
    started_here = _start(ray, address)
    try:
        count, resources = _placement(ray, workers)
        actor = ray.remote(SweepWorker).options(max_restarts=0, max_concurrency=1, **resources)
        pool = [actor.remote(str(out.resolve())) for _ in range(count)]
        names = ray.get([worker.name.remote() for worker in pool])  # waits until every worker is up
        startup = time.monotonic() - began
        view.begin(total, kept, count)
        _dispatch(ray, actor, str(out.resolve()), pool, names, todo, view, record, results)
        return startup, count
    finally:
        if started_here:
            ray.shutdown()


def _model_of(cell: Cell) -> tuple[Any, ...]:
    return cell.option("model"), cell.option("dtype"), cell.option("device")


def _dispatch(ray: Any, actor: Any, out: str, pool: list[Any], names: list[str], todo: list[Shard],
              view: SweepView, record: Any, results: list[ShardResult]) -> None:
    """Hand shards to free workers (preferring a shard of the model a worker already holds) until none is left;
    a worker that dies is replaced and its shard queued again."""
    from ray.exceptions import RayActorError, RayTaskError

    pending = collections.deque(todo)
    idle = list(zip(pool, names, [None] * len(pool), strict=True))  # (worker, name, model it holds)
    running: dict[Any, tuple[Any, str, Shard]] = {}
    attempts: collections.Counter[str] = collections.Counter()
    try:
        while pending or running:
            while idle and pending:
                worker, name, holds = idle.pop()
                shard = next((s for s in pending if _model_of(s.cell) == holds), pending[0])
                pending.remove(shard)
                attempts[shard.run_id] += 1
                view.shard_started(shard, name)
                running[worker.run.remote(shard.cell, shard.index)] = (worker, name, shard)
            ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            for ref in ready:
                worker, name, shard = running.pop(ref)
                try:
                    result = ray.get(ref)
                except (RayActorError, RayTaskError) as exc:
                    reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
                    if isinstance(exc, RayTaskError):  # the shard itself was stopped (SIGTERM); the worker lives
                        idle.append((worker, name, _model_of(shard.cell)))
                    else:
                        replacement = actor.remote(out)
                        idle.append((replacement, ray.get(replacement.name.remote()), None))
                    if attempts[shard.run_id] < MAX_ATTEMPTS:
                        view.shard_retried(shard, reason)
                        pending.appendleft(shard)
                        continue
                    result = ShardResult(shard.run_id, "failed", 0, 0, 0, 0.0, None, name,
                                         f"gave up after {MAX_ATTEMPTS} attempts: {reason}")
                else:
                    idle.append((worker, name, _model_of(shard.cell)))
                results.append(result)
                record(result)
                view.shard_done(shard, result)
    except KeyboardInterrupt:
        for worker, _, _ in list(running.values()):
            ray.kill(worker)  # its shard keeps the checkpoint it wrote after its last finished episode
        raise
