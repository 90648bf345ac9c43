"""`cachebench eval`: validate the request, load the model, build episodes, run, score, write rows.

Everything the user can get wrong is checked before the model loads or any compute starts. Rows are written
atomically to one Parquet file per run, re-written as a checkpoint while the run goes on, so an interrupted run
keeps what it finished.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

import torch

from cachebench import provenance
from cachebench.engine.chat import ChatFormat
from cachebench.engine.measure import Clock
from cachebench.engine.runner import (
    COMPRESSION_SETTINGS,
    TRUNCATE_POLICIES,
    EpisodeRunner,
    PreparedEpisode,
    RunSettings,
    TurnMeasure,
    prepare_episodes,
    warm_up,
)
from cachebench.episodes import BuildRequest, Episode
from cachebench.errors import RunInterrupted, UsageError
from cachebench.method import KVMethod
from cachebench.metrics import SCORER_REQUIRES, get_scorer
from cachebench.models.loaded import LoadedModel
from cachebench.models.loading import check_window, load_model, load_tokenizer, model_shape_config
from cachebench.params import INT64_MAX
from cachebench.registry import build_method, method_track
from cachebench.results import REUSE_TIERS
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
from cachebench.shards import (
    check_run_id,
    check_shard,
    earlier_rows,
    finished_episodes,
    select_shard,
    shard_label,
)
from cachebench.taskspec import MAX_LIMIT, TaskSpec, builder_module, check_data, check_mode, resolve_tasks


def _check_request(request: EvalRequest) -> list[TaskSpec]:
    """Every mistake in the request, found from the names, numbers, files and the model's config alone: nothing
    is loaded or built before it passes, so a bad value costs a second, not a model load or a memory blow-up."""
    check_mode(request.mode)
    if request.truncate not in TRUNCATE_POLICIES:
        raise UsageError(f"--truncate {request.truncate!r}: expected one of {', '.join(TRUNCATE_POLICIES)}")
    if request.compression not in COMPRESSION_SETTINGS:
        raise UsageError(f"--compression {request.compression!r}: expected one of {', '.join(COMPRESSION_SETTINGS)}")
    for name, value in (("--limit", request.limit), ("--context-tokens", request.context_tokens),
                        ("--max-new-tokens", request.max_new_tokens)):
        if value is not None and value < 1:
            raise UsageError(f"{name} must be at least 1, got {value}")
    if request.limit is not None and request.limit > MAX_LIMIT:  # lengths are checked against the window below
        raise UsageError(f"--limit must be at most {MAX_LIMIT}, got {request.limit}")
    if not 0 <= request.seed <= INT64_MAX:
        raise UsageError(f"--seed must be between 0 and {INT64_MAX}, got {request.seed}")
    check_shard(request.shard)
    check_run_id(request.run_id)
    for name, given in (("--pair-protocol", request.pair_protocol is not None),
                        ("--embedding", request.embedding != "online"), ("--embed-batch", request.embed_batch != 1),
                        ("--requests", request.requests is not None)):
        if given:
            raise UsageError(f"{name} applies to semantic caches; method {request.method!r} is a KV-cache method")
    specs = resolve_tasks(request.task, request.include_path)
    semantic = [spec.name for spec in specs if spec.track == "semantic"]
    if semantic:
        raise UsageError(f"task {semantic[0]} is a semantic-cache task; method {request.method!r} is a KV-cache "
                         "method (see `cachebench list methods`)")
    check_data(request.data, specs, request.task)
    for spec in specs:
        for metric in {spec.metric, *spec.metric_by_category.values()}:
            get_scorer(metric)
            package = SCORER_REQUIRES.get(metric)
            if package and importlib.util.find_spec(package) is None:
                raise UsageError(f"task {spec.name} is scored with {metric}, which needs {package}: "
                                 "pip install 'cachebench[data]'")
    check_window(request.model, request.context_tokens, request.max_new_tokens, request.truncate)
    _check_method_fits(request)
    return specs


def _check_method_fits(request: EvalRequest) -> None:
    """The method's parameters against the model's shape, from its config alone (a quantization group that does
    not divide the head dimension, a merge layer beyond the model): one line before the weights load."""
    config = model_shape_config(request.model, ask_hub=False)
    if config is None:  # a hub model neither cached nor asked for: the method checks again once it is loaded
        return
    try:
        build_method(request.method, list(request.params)).check_config(config)
    except ValueError as exc:
        raise UsageError(f"method {request.method} on {request.model}: {exc}") from None


def build_episodes(spec: TaskSpec, request: EvalRequest, model: LoadedModel | Any) -> list[Episode]:
    """Run the task's builder (generator or dataset loader) for this request; `model` is a loaded model or just
    its tokenizer (all a builder needs to measure lengths)."""
    builder = builder_module(spec)
    tokenizer = model.tokenizer if isinstance(model, LoadedModel) else model

    def count_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    episodes_wanted = request.limit or spec.episodes or 10**9
    build = BuildRequest(
        episodes=episodes_wanted,
        context_tokens=request.context_tokens or spec.context_tokens,
        seed=request.seed,
        count_tokens=count_tokens,
        args=spec.builder_args,
        data_path=request.data,
    )
    episodes = builder.build(build)[:episodes_wanted]
    if not episodes:
        raise UsageError(f"task {spec.name} produced no episodes")
    return episodes


def _settings(spec: TaskSpec, request: EvalRequest) -> RunSettings:
    return RunSettings(
        mode=request.mode or spec.mode,
        golden_history=request.golden_history,
        truncate=request.truncate,
        max_new_tokens=request.max_new_tokens,
        compression=request.compression,
        context_length=request.context_tokens or spec.context_tokens,
    )


def _row(identity: dict[str, Any], spec: TaskSpec, settings: RunSettings, measure: TurnMeasure,
         references: list[str], metric: str, score: float | None, reuse_method: bool) -> dict[str, Any]:
    return {
        **identity,
        "track": "kv",
        "task": spec.name,
        "subtask": spec.subtask,
        "mode": settings.mode,
        "compression": settings.compression,
        "context_length": settings.context_length,
        "truncation": "none" if settings.truncate == "error" else settings.truncate,
        "episode_id": measure.episode_id,
        "turn": measure.turn,
        "category": measure.category,
        "prediction": measure.prediction,
        "references": references,
        "metric": metric,
        "score": score,
        "context_tokens": measure.context_tokens,
        "prompt_tokens": measure.prompt_tokens,
        "output_tokens": measure.output_tokens,
        "truncated_tokens": measure.truncated_tokens,
        "reused_tokens": measure.reused_tokens,
        "recomputed_tokens": measure.recomputed_tokens,
        **_tier_columns(measure),
        "reuse_corrupt_blocks": measure.corrupt_blocks if reuse_method else None,
        "kv_bytes": measure.kv_bytes,
        "peak_mem_bytes": measure.peak_mem_bytes,
        "peak_kv_bytes": measure.peak_kv_bytes,
        "prefill_ms": measure.prefill_ms,
        "ttft_ms": measure.ttft_ms,
        "decode_ms_per_token": measure.decode_ms_per_token,
        "error": measure.error,
    }


def _tier_columns(measure: TurnMeasure) -> dict[str, Any]:
    """Reused tokens by store tier and the store's load time; null for a method that reused nothing."""
    reused = measure.reused_tokens > 0
    return {
        **{f"reused_{tier}_tokens": measure.reuse_tier_tokens.get(tier, 0) if reused else None
           for tier in REUSE_TIERS},
        "reuse_load_ms": measure.reuse_load_ms if reused else None,
    }


def _failed_turns(prepared: PreparedEpisode, error: str) -> list[TurnMeasure]:
    """Rows for an episode that raised: identified and marked, with nothing measured."""
    nan = float("nan")
    return [
        TurnMeasure(
            episode_id=prepared.episode.episode_id, turn=index, category=turn.category, prediction="",
            context_tokens=len(prepared.context_ids), prompt_tokens=0, output_tokens=0, reused_tokens=0,
            recomputed_tokens=0, reuse_tier_tokens={}, reuse_load_ms=0.0, kv_bytes=0, peak_mem_bytes=0, peak_kv_bytes=0,
            prefill_ms=nan, ttft_ms=nan, decode_ms_per_token=nan,
            truncated_tokens=prepared.truncated_tokens, error=error,
        )
        for index, turn in enumerate(prepared.episode.turns)
    ]


def run_eval(request: EvalRequest, progress: ProgressSink | None = None, model: LoadedModel | None = None,
             method: KVMethod | None = None) -> EvalOutcome:
    """Run one method on one task or group; returns the rows and where they were written.

    A benchmark sweeping many settings may pass the model it already loaded (it must be what request.model,
    dtype, device and attn_impl name) and a method instance, to read the method's own counters afterwards.

    No computed row is ever dropped: an episode that raises becomes error rows and the run goes on; Ctrl-C,
    SIGTERM or an unexpected exception still write the finished rows, marked partial (see RunWriter)."""
    if method_track(request.method) == "semantic":
        from cachebench.semantic.evaluate import run_semantic_eval

        return run_semantic_eval(request, resolve_tasks(request.task, request.include_path),
                                 method or build_method(request.method, list(request.params)), progress)
    progress = progress or Silent()
    specs = _check_request(request)
    method = method or build_method(request.method, list(request.params))
    check_output_dir(request.out)
    # episodes first, with the tokenizer alone: a bad data file is reported before the weights load
    tokenizer = model.tokenizer if model is not None else load_tokenizer(request.model)
    built = [(spec, select_shard(build_episodes(spec, request, tokenizer), request.shard)) for spec in specs]
    planned = sum(len(episode.turns) for _, episodes in built for episode in episodes)
    rows, built = _continued(request, built)
    if rows and not any(episodes for _, episodes in built):  # a finished run with this id: nothing to recompute
        return EvalOutcome(request.out / f"{request.run_id}.parquet", rows, 0)
    check_room(request.out, planned)
    model = model or load_model(request.model, request.dtype, request.device, request.attn_impl, request.model_args)
    torch.manual_seed(request.seed)
    chat = ChatFormat(model.tokenizer)
    plan = []
    for spec, episodes in built:
        settings = _settings(spec, request)
        plan.append((spec, settings, prepare_episodes(episodes, spec, model, chat, settings)))

    name, identity = run_identity(
        request.seed, method, run_id=request.run_id, model=model.name, model_weights=model.weights,
        dtype=model.dtype_name, device=str(model.device), hardware=provenance.hardware(model.device),
        attn_impl=model.attn_impl, timer=Clock(model.device).method, shard=shard_label(request.shard),
    )
    warm_up(model)
    try:
        method.check_config(model.config)
    except ValueError as exc:
        raise UsageError(f"method {request.method} on {model.name}: {exc}") from None
    method.attach(model)

    # a run with a stable id checkpoints after every episode (RunWriter bounds the cost), so a kill loses at most one
    writer = RunWriter(request.out / name, rows, planned, interval=0.0 if request.run_id else 30.0)
    errors = 0
    try:
        with sigterm_as_interrupt():
            for spec, settings, prepared_episodes in plan:
                errors += _run_task(spec, settings, prepared_episodes, model, method, identity, rows, writer,
                                    progress)
    except KeyboardInterrupt:
        raise RunInterrupted(writer.finish(complete=False), len(rows), writer.problem) from None
    except BaseException:
        writer.finish(complete=False)  # whatever went wrong, the finished rows are kept, marked partial
        raise
    where = writer.finish(complete=True)
    return EvalOutcome(where, rows, errors, writer.problem, _store_warnings(rows))


def _continued(request: EvalRequest, built: list[tuple[TaskSpec, list[Episode]]]
               ) -> tuple[list[dict[str, Any]], list[tuple[TaskSpec, list[Episode]]]]:
    """(the rows an earlier run with this stable id already holds, the episodes still to run). An episode counts
    as finished when its rows are there without an error; an episode that failed (out of memory, a store that
    died) is run again and its error rows dropped, so a rerun retries failures and recomputes nothing else."""
    if request.run_id is None:
        return [], built
    earlier, _ = earlier_rows(request.out / f"{request.run_id}.parquet", request.run_id)
    failed = {(row["task"], row["episode_id"]) for row in earlier if row.get("error") is not None}
    kept = [row for row in earlier if (row["task"], row["episode_id"]) not in failed]
    done = finished_episodes(kept)
    remaining = [(spec, [episode for episode in episodes if (spec.name, episode.episode_id) not in done])
                 for spec, episodes in built]
    return kept, remaining


def _run_task(spec: TaskSpec, settings: RunSettings, prepared_episodes: list[PreparedEpisode], model: LoadedModel,
              method: KVMethod, identity: dict[str, Any], rows: list[dict[str, Any]], writer: RunWriter,
              progress: ProgressSink) -> int:
    """Run one task's episodes, appending a row per turn; returns how many rows failed."""
    progress.task_started(spec.name, sum(len(p.episode.turns) for p in prepared_episodes))
    runner = EpisodeRunner(model, method, spec, settings)
    errors = 0
    try:
        for index, prepared in enumerate(prepared_episodes):
            progress.episode_started(index, len(prepared_episodes))
            try:
                measures = runner.run(prepared, progress.turn_done)
            except UsageError:
                raise
            except Exception as exc:  # out of memory, a store or method that failed: the episode's rows say so
                measures = _failed_turns(prepared, f"{type(exc).__name__}: {exc}".splitlines()[0])
                errors += len(measures)
            for measure, turn in zip(measures, prepared.episode.turns, strict=True):
                metric = spec.metric_for(turn.category)
                score = None
                if measure.error is None:
                    score = get_scorer(metric)(measure.prediction, turn.references, turn.meta)
                rows.append(_row(identity, spec, settings, measure, turn.references, metric, score,
                                 method.reuses_kv))
            writer.maybe()
    finally:
        runner.close()
    return errors


def _store_warnings(rows: list[dict[str, Any]]) -> list[str]:
    """What a reuse method's store repaired during the run, for the run's summary."""
    corrupt = sum(row.get("reuse_corrupt_blocks") or 0 for row in rows)
    if not corrupt:
        return []
    return [f"KV store: {corrupt} damaged disk block(s) failed verification, were deleted and computed again "
            "(column reuse_corrupt_blocks)"]
