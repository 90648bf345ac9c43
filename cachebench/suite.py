"""Suites: named, fixed grids of (method, task, settings) entries kept as data (cachebench/suites/*.yaml).

A suite is what a regression gate compares: the same entries run the same way on every commit, one Parquet file
per entry and a `_suite.json` manifest. Every entry is checked with the same checks `cachebench eval` makes before
anything runs, so a typo in entry 9 fails in a second, not after eight entries of compute. The KV entries share one
model load and the semantic entries one embedder load.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import yaml

from cachebench import __version__, provenance
from cachebench.errors import UsageError, unknown_name
from cachebench.runs import EvalRequest, ProgressSink, Silent, check_output_dir

MANIFEST = "_suite.json"  # "_": pandas and pyarrow folder reads skip it beside the rows
_SUITE_KEYS = {"name", "summary", "model", "dtype", "device", "seed", "entries"}
_ENTRY_KEYS = {"method", "task", "params", "limit", "mode", "max_new_tokens", "context_tokens", "compression",
               "llm_cost", "data"}


@dataclass(frozen=True)
class SuiteEntry:
    method: str
    task: str
    params: dict[str, Any] = field(default_factory=dict)  # as written in the YAML: {ratio: 0.5}
    limit: int | None = None
    mode: str | None = None
    max_new_tokens: int | None = None
    context_tokens: int | None = None
    compression: str | None = None  # KV entries: query-agnostic (the default) or query-aware
    llm_cost: str | None = None  # semantic entries: "800" or "code=900,factual=400"
    data: str | None = None

    def assignments(self) -> tuple[str, ...]:
        """The params as `--param name=value` strings, so they go through the CLI's typed parsing."""
        return tuple(f"{name}={_param_text(value)}" for name, value in self.params.items())

    def as_dict(self) -> dict[str, Any]:
        """The fields that were set, as the manifest records them."""
        out: dict[str, Any] = {"method": self.method, "task": self.task}
        if self.params:
            out["params"] = dict(self.params)
        for key in ("limit", "mode", "max_new_tokens", "context_tokens", "compression", "llm_cost", "data"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


@dataclass(frozen=True)
class Suite:
    name: str
    summary: str
    entries: tuple[SuiteEntry, ...]
    origin: str  # where it was read from, for messages and the manifest
    model: str = "embedded"
    dtype: str = "auto"
    device: str = "cpu"  # not "auto": a suite's reference numbers come from one kind of device
    seed: int = 0


@dataclass
class EntryResult:
    index: int
    entry: SuiteEntry
    file: str | None  # relative to the suite's output folder
    rows: int
    errors: int
    mean_score: float | None
    seconds: float


@dataclass
class SuiteOutcome:
    suite: Suite
    out: Path
    manifest: Path
    entries: list[EntryResult]
    seconds: float

    @property
    def errors(self) -> int:
        return sum(result.errors for result in self.entries)


class SuiteProgress(ProgressSink, Protocol):
    def entry_started(self, index: int, total: int, entry: SuiteEntry) -> None: ...

    def entry_done(self, result: EntryResult) -> None: ...


def _param_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _optional_int(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{where}: expected an integer, got {value!r}")
    return value


def _llm_cost_text(value: Any, where: str) -> str | None:
    """YAML gives 800, "800", or {code: 900, factual: 400}; the run takes the --llm-cost-ms string."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, dict):
        return ",".join(f"{name}={cost}" for name, cost in value.items())
    raise UsageError(f"{where}: llm_cost must be milliseconds or a mapping of category: ms, got {value!r}")


def _parse_entry(raw: Any, where: str) -> SuiteEntry:
    if not isinstance(raw, dict):
        raise UsageError(f"{where}: expected a mapping with method and task, got {raw!r}")
    unknown = sorted(set(raw) - _ENTRY_KEYS)
    if unknown:
        raise UsageError(f"{where}: unknown key {unknown[0]!r}; an entry takes {', '.join(sorted(_ENTRY_KEYS))}")
    for key in ("method", "task"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise UsageError(f"{where}: {key} must be a name, got {raw.get(key)!r}")
    params = raw.get("params") or {}
    if not isinstance(params, dict) or any(isinstance(v, dict | list) or v is None for v in params.values()):
        raise UsageError(f"{where}: params must map names to single values, got {params!r}")
    for key in ("mode", "compression", "data"):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise UsageError(f"{where}: {key} must be a string, got {raw[key]!r}")
    return SuiteEntry(
        method=raw["method"], task=raw["task"], params={str(k): v for k, v in params.items()},
        limit=_optional_int(raw.get("limit"), f"{where} limit"), mode=raw.get("mode"),
        max_new_tokens=_optional_int(raw.get("max_new_tokens"), f"{where} max_new_tokens"),
        context_tokens=_optional_int(raw.get("context_tokens"), f"{where} context_tokens"),
        compression=raw.get("compression"), llm_cost=_llm_cost_text(raw.get("llm_cost"), where), data=raw.get("data"),
    )


def parse_suite(text: str, origin: str, default_name: str) -> Suite:
    """A suite from YAML text; any shape error is a one-line UsageError naming `origin`."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"{origin}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{origin}: expected a mapping with an `entries` list")
    unknown = sorted(set(data) - _SUITE_KEYS)
    if unknown:
        raise UsageError(f"{origin}: unknown key {unknown[0]!r}; a suite takes {', '.join(sorted(_SUITE_KEYS))}")
    entries = data.get("entries")
    if not isinstance(entries, list) or not entries:
        raise UsageError(f"{origin}: `entries` must be a non-empty list")
    for key in ("name", "summary", "model", "dtype", "device"):
        if key in data and not isinstance(data[key], str):
            raise UsageError(f"{origin}: {key} must be a string, got {data[key]!r}")
    return Suite(
        name=data.get("name", default_name), summary=data.get("summary", ""), origin=origin,
        entries=tuple(_parse_entry(raw, f"{origin} entry {i}") for i, raw in enumerate(entries)),
        model=data.get("model", "embedded"), dtype=data.get("dtype", "auto"), device=data.get("device", "cpu"),
        seed=_optional_int(data.get("seed"), f"{origin} seed") or 0,
    )


def _shipped() -> dict[str, Any]:
    root = resources.files("cachebench.suites")
    return {item.name.removesuffix(".yaml"): item for item in root.iterdir() if item.name.endswith(".yaml")}


def suite_names() -> list[str]:
    return sorted(_shipped())


def load_suite(name: str | None = None, file: Path | None = None) -> Suite:
    """A shipped suite by name, or a user's suite file; exactly one of the two."""
    if (name is None) == (file is None):
        raise UsageError("give a suite name or --file PATH (one of the two)")
    if file is not None:
        if not file.is_file():
            raise UsageError(f"--file {file}: no such file")
        return parse_suite(file.read_text(encoding="utf-8"), str(file), file.stem)
    shipped = _shipped()
    if name not in shipped:
        raise unknown_name("suite", str(name), shipped)
    return parse_suite(shipped[name].read_text(encoding="utf-8"), f"suites/{name}.yaml", str(name))


def _request(suite: Suite, entry: SuiteEntry, out: Path) -> EvalRequest:
    return EvalRequest(
        method=entry.method, task=entry.task, params=entry.assignments(), model=suite.model, dtype=suite.dtype,
        device=suite.device, mode=entry.mode, context_tokens=entry.context_tokens, limit=entry.limit,
        seed=suite.seed, out=out, max_new_tokens=entry.max_new_tokens, data=entry.data, llm_cost=entry.llm_cost,
        compression=entry.compression or "query-agnostic",
    )


def _check_entry(suite: Suite, entry: SuiteEntry, out: Path) -> EvalRequest:
    """The checks `cachebench eval` makes for this entry (names, track, params, options), without running it."""
    from cachebench.params import parse_params
    from cachebench.registry import method_class, method_track
    from cachebench.taskspec import resolve_tasks

    track = method_track(entry.method)
    specs = resolve_tasks(entry.task)
    parse_params(method_class(entry.method).Params, list(entry.assignments()), owner=entry.method)
    if entry.data is not None and not Path(entry.data).is_file():
        raise UsageError(f"data {entry.data}: no such file")
    request = _request(suite, entry, out)
    if track == "kv":
        from cachebench.eval_run import _check_request

        if entry.llm_cost is not None:
            raise UsageError("llm_cost applies to semantic-cache entries only")
        _check_request(request)
    else:
        from cachebench.semantic.evaluate import _check

        for key in ("context_tokens", "compression"):
            if getattr(entry, key) is not None:
                raise UsageError(f"{key} applies to KV-cache entries only")
        _check(request, specs)
    return request


def check_suite(suite: Suite, out: Path) -> list[EvalRequest]:
    """Every entry's request, or a one-line UsageError for the first entry that cannot run."""
    from cachebench.models.loading import resolve_device, resolve_dtype

    try:
        resolve_dtype(suite.dtype, resolve_device(suite.device))
    except UsageError as exc:
        raise UsageError(f"{suite.origin}: {exc}") from None
    requests = []
    for index, entry in enumerate(suite.entries):
        try:
            requests.append(_check_entry(suite, entry, out))
        except UsageError as exc:
            raise UsageError(f"{suite.origin} entry {index} ({entry.method} on {entry.task}): {exc}") from None
    if out.exists() and (any(out.rglob("*.parquet")) or (out / MANIFEST).exists()):
        raise UsageError(f"--out {out}: already holds results; a suite writes into a new or empty folder, because "
                         "the gate reads every Parquet file under it")
    check_output_dir(out)
    return requests


def _mean_score(rows: list[dict[str, Any]]) -> float | None:
    """Mean score of the scored rows (semantic warm-up rows left out, as `cachebench show` does)."""
    scores = [row["score"] for row in rows if row.get("score") is not None and not row.get("warmup")]
    return sum(scores) / len(scores) if scores else None


def _write_manifest(outcome: SuiteOutcome, setup_seconds: float) -> None:
    suite = outcome.suite
    manifest = {
        "suite": suite.name,
        "summary": suite.summary,
        "origin": suite.origin,
        "settings": {"model": suite.model, "dtype": suite.dtype, "device": suite.device, "seed": suite.seed},
        "git_sha": provenance.git_sha(),
        "cachebench_version": __version__,
        "created_at": provenance.utc_now().isoformat(timespec="seconds"),
        "hardware": _hardware(suite),
        "seconds": round(outcome.seconds, 1),
        "setup_seconds": round(setup_seconds, 1),
        "files": [result.file for result in outcome.entries if result.file],
        "entries": [
            {"index": r.index, **r.entry.as_dict(), "file": r.file, "rows": r.rows, "errors": r.errors,
             "mean_score": None if r.mean_score is None else round(r.mean_score, 6), "seconds": round(r.seconds, 1)}
            for r in outcome.entries
        ],
    }
    temporary = outcome.manifest.with_name(f".{MANIFEST}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, outcome.manifest)


def _hardware(suite: Suite) -> str:
    from cachebench.models.loading import resolve_device

    return provenance.hardware(resolve_device(suite.device))


def run_suite(suite: str | Suite, out: Path, progress: SuiteProgress | None = None) -> SuiteOutcome:
    """Check every entry, then run them in order: one Parquet file per entry (`NN-method.parquet`) and
    `_suite.json` under `out`. Entries with failed rows are recorded and the rest still run."""
    suite = load_suite(suite) if isinstance(suite, str) else suite
    requests = check_suite(suite, out)
    sink: ProgressSink = progress or Silent()
    started = time.monotonic()
    model, embedder = _load_shared(suite)
    setup_seconds = time.monotonic() - started
    out.mkdir(parents=True, exist_ok=True)
    results: list[EntryResult] = []
    for index, (entry, request) in enumerate(zip(suite.entries, requests, strict=True)):
        if progress is not None:
            progress.entry_started(index, len(suite.entries), entry)
        entry_started = time.monotonic()
        outcome = _run_entry(request, sink, model, embedder)
        file = _keep(outcome.path, out, f"{index:02d}-{entry.method}.parquet")
        result = EntryResult(index, entry, file, len(outcome.rows), outcome.errors, _mean_score(outcome.rows),
                             time.monotonic() - entry_started)
        results.append(result)
        if progress is not None:
            progress.entry_done(result)
    done = SuiteOutcome(suite, out, out / MANIFEST, results, time.monotonic() - started)
    _write_manifest(done, setup_seconds)
    return done


def _keep(path: Path | None, out: Path, name: str) -> str | None:
    """Give an entry's file its suite name; a file the run had to write elsewhere (its --out refused it) stays
    where it is, named by its absolute path, rather than being lost in a failed move."""
    if path is None:
        return None
    try:
        shutil.move(path, out / name)
    except OSError as exc:
        print(f"warning: could not move {path} to {out / name} ({exc.strerror or exc}); it stays there",
              file=sys.stderr)
        return str(path.resolve())
    return name


def _load_shared(suite: Suite) -> tuple[Any, Any]:
    """The model (for KV entries) and the embedder (for semantic entries), each loaded once, if needed."""
    from cachebench.registry import method_track

    tracks = {method_track(entry.method) for entry in suite.entries}
    model = embedder = None
    if "kv" in tracks:
        from cachebench.models.loading import load_model

        model = load_model(suite.model, suite.dtype, suite.device, "sdpa")
    if "semantic" in tracks:
        from cachebench.models.loading import resolve_device
        from cachebench.semantic.embedder import load_embedder

        embedder = load_embedder("embedded", str(resolve_device(suite.device)))
    return model, embedder


def _run_entry(request: EvalRequest, progress: ProgressSink, model: Any, embedder: Any) -> Any:
    from cachebench.registry import build_method, method_track

    if method_track(request.method) == "kv":
        from cachebench.eval_run import run_eval

        return run_eval(request, progress, model=model)
    from cachebench.semantic.evaluate import run_semantic_eval
    from cachebench.taskspec import resolve_tasks

    method = build_method(request.method, list(request.params))
    return run_semantic_eval(request, resolve_tasks(request.task), method, progress, embedder=embedder)
