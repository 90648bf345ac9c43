"""`cachebench eval` for semantic caches: build each task's stream, embed it, run the method, write rows.

Everything the user can get wrong (task of the other track, bad --llm-cost-ms, unreachable store server, bad
data file) is reported before the stream runs. One row per looked-up request.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from cachebench import provenance
from cachebench.errors import RunInterrupted, UsageError
from cachebench.params import INT64_MAX
from cachebench.runs import (
    EvalOutcome,
    EvalRequest,
    ProgressSink,
    RunWriter,
    Silent,
    check_output_dir,
    check_room,
    run_identity,
    sigterm_as_interrupt,
)
from cachebench.semantic.embedder import Embedder, load_embedder
from cachebench.semantic.llm_cost import measure_llm_cost, parse_llm_cost
from cachebench.semantic.method import SemanticMethod
from cachebench.semantic.request_vectors import check_embedding
from cachebench.semantic.runner import RequestResult, StreamRunner, row_mode
from cachebench.semantic.stream import PAIR_PROTOCOLS, Stream, StreamRequest
from cachebench.shards import check_run_id, earlier_rows, shard_label
from cachebench.taskspec import MAX_LIMIT, SEMANTIC_METRIC, TaskSpec, builder_module, check_data


def build_stream(spec: TaskSpec, request: EvalRequest) -> Stream:
    """Run the task's builder and check what every builder must deliver."""
    builder = builder_module(spec)
    if request.requests is not None and not getattr(builder, "GENERATED", False):  # a dataset's size is its file's
        raise UsageError(f"--requests applies to generated tasks (semantic.stream, semantic.pairs); {spec.name} "
                         "reads its data (--limit N keeps its first N)")
    stream = builder.build_stream(StreamRequest(seed=request.seed, args=spec.builder_args, limit=request.limit,
                                                data_path=request.data, requests=request.requests))
    stream.warmup = spec.warmup if stream.protocol == "stream" else 0.0
    looked_up = stream.requests or [second for _, second in stream.pairs]
    if not looked_up:
        raise UsageError(f"task {spec.name} produced no requests")
    for item in stream.all_requests():
        if not isinstance(item.user, str) or not item.user:
            raise UsageError(f"task {spec.name}: request {item.request_id} has user {item.user!r}; a user id must "
                             "be non-empty text (a cache scoped per user keeps each id apart)")
        if spec.categories and item.category not in spec.categories:
            raise UsageError(f"task {spec.name}: request {item.request_id} has category {item.category!r}, "
                             f"expected one of {', '.join(spec.categories)}")
    return stream


def _check(request: EvalRequest, specs: list[TaskSpec]) -> dict[str, float]:
    """Everything the user can get wrong that needs no embedder, store or data read; returns --llm-cost-ms."""
    kv_tasks = [spec.name for spec in specs if spec.track != "semantic"]
    if kv_tasks:
        raise UsageError(f"method {request.method!r} is a semantic cache; task {kv_tasks[0]} is a KV-cache task "
                         "(see `cachebench list tasks`)")
    if request.mode is not None:
        raise UsageError("--mode applies to KV tasks; a semantic task's protocol comes with the task (pair tasks "
                         "take --pair-protocol)")
    if request.pair_protocol is not None:
        if request.pair_protocol not in PAIR_PROTOCOLS:
            raise UsageError(f"--pair-protocol {request.pair_protocol!r}: expected one of {', '.join(PAIR_PROTOCOLS)}")
        if not any(spec.mode == "pair" for spec in specs):
            raise UsageError(f"--pair-protocol applies to pair tasks; {request.task} has none (a request stream)")
    check_embedding(request.embedding, request.embed_batch)
    if request.limit is not None and request.limit < 1:
        raise UsageError(f"--limit must be at least 1, got {request.limit}")
    if request.limit is not None and request.limit > MAX_LIMIT:
        raise UsageError(f"--limit must be at most {MAX_LIMIT}, got {request.limit}")
    if not 0 <= request.seed <= INT64_MAX:
        raise UsageError(f"--seed must be between 0 and {INT64_MAX}, got {request.seed}")
    check_data(request.data, specs, request.task)
    if request.shard is not None and request.shard[1] > 1:
        raise UsageError("--shard applies to KV tasks: a semantic cache's state is the stream so far, so its "
                         "requests cannot be split between workers")
    check_run_id(request.run_id)
    costs = parse_llm_cost(request.llm_cost)
    if not all(math.isfinite(cost) for cost in costs.values()):  # nan passes `cost <= 0`; inf breaks h* and F
        raise UsageError(f"--llm-cost-ms {request.llm_cost!r}: costs must be finite numbers of milliseconds")
    return costs


def _llm_costs(request: EvalRequest, spec: TaskSpec, stream: Stream, given: dict[str, float]
               ) -> tuple[dict[str, float], str]:
    """C per category: --llm-cost-ms, else the task's, else measured with --model. Returns (costs, source)."""
    requests = stream.requests or [second for _, second in stream.pairs]
    categories = sorted({r.category for r in requests})
    costs = {c: given.get(c, given.get("*", spec.llm_cost_ms.get(c, spec.llm_cost_ms.get("*")))) for c in categories}
    missing = [c for c, cost in costs.items() if cost is None]
    if not missing:
        return {c: float(v) for c, v in costs.items() if v is not None}, "set"
    from cachebench.models.loading import load_model

    model = load_model(request.model, request.dtype, request.device, request.attn_impl, request.model_args)
    measured = measure_llm_cost(model, requests, missing, request.max_new_tokens or spec.max_new_tokens)
    costs.update(measured)
    return {c: float(v) for c, v in costs.items() if v is not None}, model.name


def _row(identity: dict[str, Any], spec: TaskSpec, mode: str, embedding: str, result: RequestResult, llm: str,
         llm_ms: float | None) -> dict[str, Any]:
    request, decision = result.request, result.decision
    wrong = result.outcome == "FP" or result.stale
    return {
        **identity,
        "track": "semantic",
        "task": spec.name,
        "subtask": spec.subtask,
        "mode": mode,
        "episode_id": request.request_id,
        "turn": result.position,
        "category": request.category,
        "prediction": decision.response if decision.hit else "",
        "references": [request.response],
        "metric": SEMANTIC_METRIC,
        "score": None if result.error else (0.0 if wrong else 1.0),
        "hit": None if result.error else decision.hit,
        "outcome": result.outcome or None,
        "similarity": decision.similarity,
        "lookup_ms": result.lookup_ms,
        "stale": None if result.error else result.stale,
        "user": request.user,
        "class_id": request.class_id,
        "served_class": result.served_class,
        "warmup": result.warmup,
        "embed_ms": result.embed_ms,
        "embed_mode": embedding,
        "fetch_ms": result.fetch_ms if decision.hit else None,
        "llm": llm,
        "llm_ms": llm_ms,
        "cache_entries": result.cache_entries,
        "cache_bytes": result.cache_bytes,
        "error": result.error,
    }


def run_semantic_eval(request: EvalRequest, specs: list[TaskSpec], method: SemanticMethod,
                      progress: ProgressSink | None = None, embedder: Embedder | None = None) -> EvalOutcome:
    """Run one semantic method on one task or group; returns the rows and where they were written.

    A store that fails mid-run (a Redis server killed, a Chroma server gone) turns the requests it cannot serve
    into error rows (StreamRunner stops calling it after a few failures in a row); closing it may fail too, with
    a warning. Every computed row is written whatever happens, marked partial when the run did not finish."""
    progress = progress or Silent()
    given = _check(request, specs)
    check_output_dir(request.out)
    streams = [build_stream(spec, request) for spec in specs]  # a bad data file is reported before any load
    planned = sum(_looked_up(stream) for stream in streams)
    if request.run_id is not None:  # a stable id: a finished run is kept; a killed one restarts (see below)
        earlier, finished = earlier_rows(request.out / f"{request.run_id}.parquet", request.run_id)
        if finished and not any(row.get("error") for row in earlier):
            return EvalOutcome(request.out / f"{request.run_id}.parquet", earlier, 0)
    check_room(request.out, planned)
    from cachebench.models.loading import resolve_device

    embedder = embedder or load_embedder(request.embedder, str(resolve_device(request.device)))
    name, identity = run_identity(
        request.seed, method, run_id=request.run_id, model=embedder.name, model_weights="pretrained",
        dtype="float32", device=embedder.device, hardware=provenance.hardware(torch.device("cpu")),
        timer="perf_counter", shard=shard_label(request.shard),
    )
    # the stores' namespace is new on every run, also for a stable id: a killed run's entries may still be on a
    # server, and a cache's state is the stream so far, so a semantic run is never continued, only run again
    run_id = provenance.new_run_id(identity["created_at"])
    method.open(embedder.dim, f"{run_id}-0")  # an unreachable store server fails here, before any work
    plan = []
    try:
        for spec, stream in zip(specs, streams, strict=True):
            costs, llm = _llm_costs(request, spec, stream, given)
            plan.append((spec, stream, costs, llm))
    except BaseException:
        _close(method, [])
        raise
    rows: list[dict[str, Any]] = []
    writer = RunWriter(request.out / name, rows, planned)
    warnings: list[str] = []
    errors = 0
    try:
        with sigterm_as_interrupt():
            for index, (spec, stream, costs, llm) in enumerate(plan):
                errors += _run_stream(method, embedder, request, spec, stream, costs, llm, identity,
                                      f"{run_id}-{index}", index > 0, rows, writer, progress, warnings)
    except KeyboardInterrupt:
        raise RunInterrupted(writer.finish(complete=False), len(rows), writer.problem) from None
    except BaseException:
        writer.finish(complete=False)
        raise
    where = writer.finish(complete=True)
    return EvalOutcome(where, rows, errors, writer.problem, warnings)


def embed_label(mode: str, embed_batch: int) -> str:
    """How rows name the embedding mode: online (one request per encode), online:N (micro-batches of N),
    precomputed, or none (a method that never embeds)."""
    return f"online:{embed_batch}" if mode == "online" and embed_batch > 1 else mode


def _looked_up(stream: Stream) -> int:
    return len(stream.requests) or len(stream.pairs)


def _run_stream(method: SemanticMethod, embedder: Embedder, request: EvalRequest, spec: TaskSpec, stream: Stream,
                costs: dict[str, float], llm: str, identity: dict[str, Any], namespace: str, reopen: bool,
                rows: list[dict[str, Any]], writer: RunWriter, progress: ProgressSink, warnings: list[str]) -> int:
    """One task's stream against a fresh cache; appends a row per looked-up request, returns how many failed."""
    progress.task_started(spec.name, _looked_up(stream))
    progress.episode_started(0, 1)
    pair_protocol = request.pair_protocol or spec.pair_protocol or "retrieval"
    mode = row_mode(stream, pair_protocol)
    runner = StreamRunner(method, embedder, request.embedding, request.embed_batch)
    embedding = embed_label(runner.vectors.mode, request.embed_batch)
    if (line := method.protocol_warning(mode)) is not None:
        warnings.append(f"{spec.name}: {line}")

    def keep(result: RequestResult) -> None:
        rows.append(_row(identity, spec, mode, embedding, result, llm, costs.get(result.request.category)))
        progress.turn_done()
        writer.maybe()

    try:
        if reopen:
            try:
                method.open(embedder.dim, namespace)
            except Exception as exc:  # the store died during an earlier task of the group
                return len(runner.fail_all(stream, exc, keep))
        results = runner.run(stream, keep, pair_protocol)
        return sum(result.error is not None for result in results)
    finally:
        warnings.extend(f"{spec.name}: {line}" for line in method.run_warnings())  # before re-initialising
        _close(method, warnings)
        method.__init__(method.params)  # a fresh cache for the next task


def _close(method: SemanticMethod, warnings: list[str]) -> None:
    """Close the method's stores; a store that is gone cannot clean up, which costs no row."""
    try:
        method.close()
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        warnings.append(f"closing the cache's store failed ({reason}); its entries may remain on the server")
