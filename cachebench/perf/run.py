"""Orchestration of `cachebench perf`: check the methods, parameters, lengths and output folder, load the model,
measure the floors, then every (method, context) cell with a progress line per cell; write the cells as result
rows (cachebench.perf.rows) and render a Markdown table with each figure's ratio to its floor."""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cachebench import provenance
from cachebench.errors import RunInterrupted, UsageError
from cachebench.method import KVMethod
from cachebench.params import MAX_TOKENS, canonical_json
from cachebench.perf.floors import Floors, measure_floors, rate
from cachebench.perf.measure import WARMUP_STEPS, PerfRow, PerfSettings, measure
from cachebench.perf.rows import cell_rows, failed_rows
from cachebench.perf.timing import how, timer_name

__all__ = ["PerfReport", "PerfRequest", "PerfSettings", "Progress", "build_methods", "run_perf"]

MIB = 2**20
NOT_MEASURED = "–"


@dataclass(frozen=True)
class PerfRequest:
    model: str
    methods: tuple[str, ...]  # names, or the shorthand name:k=v,k=v for one setting of a method
    params: tuple[str, ...]  # --param name=value, given to every listed method that declares `name`
    settings: PerfSettings
    dtype: str = "auto"
    device: str = "auto"
    attn_impl: str = "sdpa"
    out: Path | None = None  # a folder for the run's Parquet file


class Progress:
    """One line on stderr per step and per cell, with the seconds since the command started: a long cell on a
    slow device shows the command working within seconds, and a CI log keeps every line."""

    def __init__(self, enabled: bool = True) -> None:
        self._enabled = enabled
        self._start = time.monotonic()

    def say(self, message: str) -> None:
        if self._enabled:
            print(f"[{time.monotonic() - self._start:7.1f}s] {message}", file=sys.stderr, flush=True)


@dataclass
class PerfReport:
    model: str
    dtype: str
    hardware: str
    timer: str
    floors: Floors
    rows: list[PerfRow]
    path: Path | None = None  # where the result rows were written (None without --out)
    problem: str | None = None  # the rows could not be written where asked (cachebench.runs.RunWriter)
    failures: list[str] = field(default_factory=list)  # cells that raised, one line each
    written: int = 0  # result rows in the file at `path`

    def render(self) -> str:
        """The table; a figure that could not be measured here is "–", with a note below saying why."""
        lines = [
            f"{self.model} ({self.dtype}) on {self.hardware}; times: {self.timer}",
            f"floors measured here: {self.floors.describe(self.dtype)}",
            "",
            "| method | params | context | batch | KV MiB | peak MiB | prefill ms | / floor | TTFT ms | "
            "eager decode ms | static decode ms | / floor | tokens/s |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in self.rows:
            static = f"{r.static_decode_ms:.2f}" + (" (graph)" if r.graph else "")
            peak = _mib(r.peak_mem_bytes)
            if r.batch > 1:
                peak += f" (batch {_mib(r.batch_peak_mem_bytes)})"
            lines.append(
                f"| {r.method} | {r.label} | {r.context:,} | {r.batch} | {r.kv_bytes / MIB:,.2f} | {peak} | "
                f"{r.prefill_ms:,.1f} | {r.prefill_ms / r.prefill_floor_ms:.2f}x | {r.ttft_ms:,.1f} | "
                f"{r.eager_decode_ms:.2f} | {static} | {r.static_decode_ms / r.decode_floor_ms:.2f}x | "
                f"{_significant(r.tokens_per_s)} |"
            )
        if any(r.peak_mem_bytes is None or (r.batch > 1 and r.batch_peak_mem_bytes is None) for r in self.rows):
            lines += ["", f"{NOT_MEASURED} peak: the process's peak RSS did not grow over the cell (the allocator "
                          "reused memory it already held), so its peak cannot be told apart from earlier work"]
        return "\n".join(lines)


def _mib(value: int | None) -> str:
    return NOT_MEASURED if value is None else f"{value / MIB:,.1f}"


def _significant(value: float) -> str:
    """Three significant digits, with thousands separators above 1,000 (0.42 tokens/s is not 0)."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _split_spec(spec: str) -> tuple[str, list[str]]:
    """`snapkv:ratio=0.75,window=32` -> ("snapkv", ["ratio=0.75", "window=32"]); a plain name has none."""
    name, _, inline = spec.partition(":")
    return name, [item for item in inline.split(",") if item]


def build_methods(specs: tuple[str, ...], params: tuple[str, ...]) -> list[KVMethod]:
    """Every method, built and validated exactly as `cachebench eval` builds its one (cachebench.params).

    One method gets every `--param`. With several, each `--param name=value` goes to the methods that declare
    `name` (`--method full --method snapkv --param ratio=0.75`); a name none of them declares is refused with
    the error eval gives for it."""
    from cachebench.registry import build_method, method_class, method_track

    split = [_split_spec(spec) for spec in specs]
    for name, _ in split:
        if method_track(name) != "kv":
            raise UsageError(f"--method {name}: perf measures KV-cache methods")
    if len(split) == 1:
        name, inline = split[0]
        chosen = [(name, [*inline, *params])]
    else:
        declared = {name: {f.name for f in dataclasses.fields(method_class(name).Params)} for name, _ in split}
        for item in params:
            key = item.split("=", 1)[0].strip()
            if "=" in item and any(key in names for names in declared.values()):
                continue
            takers = [name for name, _ in split if declared[name]] or [split[0][0]]
            build_method(takers[0], [item])  # raises eval's error for this parameter
        chosen = [(name, [*inline, *(p for p in params if p.split("=", 1)[0].strip() in declared[name])])
                  for name, inline in split]
    built = []
    for name, assignments in chosen:
        method = build_method(name, assignments)
        if method.reuses_kv or not method.fixed_cache_while_decoding:
            raise UsageError(f"--method {name}: its cache does not fit static decode buffers (it changes while "
                             "decoding, its heads hold different lengths, or it reuses stored KV); perf serves "
                             "methods that shape the cache at prefill")
        built.append(method)
    return built


def check_lengths(model: str, settings: PerfSettings) -> None:
    """Context lengths against the model's window, read from its config alone (no weights, no network)."""
    from cachebench.models.loading import model_window

    window = model_window(model, ask_hub=False)
    longest = max(settings.contexts)
    if longest > MAX_TOKENS:
        raise UsageError(f"--context must be at most {MAX_TOKENS}, got {longest}")
    # the timed requests decode past the context: the warm-up, the first token and the timed steps
    need = longest + 1 + max(settings.decode_steps, WARMUP_STEPS)
    if window is not None and need > window:
        raise UsageError(f"--context {longest} plus {need - longest} decoded tokens is more than the model's "
                         f"{window}-token window")


def run_perf(request: PerfRequest, progress: Progress | None = None) -> PerfReport:
    """Measure every (method, context) cell; with `request.out`, write them as result rows as they finish (a
    checkpoint now and then, the finished rows kept on Ctrl-C, SIGTERM or a crash, as eval keeps its)."""
    from cachebench.engine.session import LayerHooks
    from cachebench.models.loading import load_model
    from cachebench.runs import RunWriter, check_output_dir, check_room, run_identity, sigterm_as_interrupt

    progress = progress or Progress(enabled=False)
    settings = request.settings
    built = build_methods(request.methods, request.params)  # every input checked before the model loads
    check_lengths(request.model, settings)
    planned = len(built) * len(settings.contexts) * settings.repeats
    if request.out is not None:
        check_output_dir(request.out)
        check_room(request.out, planned)
    progress.say(f"loading {request.model}")
    torch.manual_seed(settings.seed)  # random: weights
    model = load_model(request.model, request.dtype, request.device, request.attn_impl)
    if model.device.type != "cuda":
        print("warning: no GPU: running on the CPU, where decode runs without CUDA graphs and times say little "
              "about a GPU; use small shapes (--model random:smollm2-135m --context 512)", file=sys.stderr)
    progress.say(f"measuring the floors on {model.device}")
    floors = measure_floors(model.device, model.dtype)
    progress.say(f"floors: {rate(floors.bandwidth, 'B/s')}, {rate(floors.flops, 'FLOP/s')}")
    hardware = provenance.hardware(model.device)
    name, identity = run_identity(
        settings.seed, built[0], model=model.name, model_weights=model.weights, dtype=model.dtype_name,
        device=str(model.device), hardware=hardware, attn_impl=model.attn_impl, timer=timer_name(model.device))
    subtask = model.name.removeprefix("random:")
    report = PerfReport(model.name, model.dtype_name, hardware, how(model.device), floors, [])
    rows: list[dict[str, Any]] = []
    writer = RunWriter(request.out / name, rows, planned) if request.out is not None else None
    hooks = LayerHooks(model.model) if any(m.uses_layer_hook for m in built) else None
    cells = [(method, context) for method in built for context in settings.contexts]
    try:
        with sigterm_as_interrupt():
            for method in built:
                method.attach(model)
            for index, (method, context) in enumerate(cells):
                cell_identity = {**identity, "method": method.name, "method_params": canonical_json(method.params)}
                label = f"{method.name} · {context:,} tokens ({index + 1}/{len(cells)})"
                progress.say(f"{label}: started")
                began = time.monotonic()
                try:
                    row = measure(model, method, context, settings, floors, hooks)
                except ValueError as exc:
                    raise UsageError(str(exc)) from None
                except torch.OutOfMemoryError as exc:
                    error = f"{type(exc).__name__}: {exc}".splitlines()[0]
                    report.failures.append(f"{method.name} at {context:,} tokens: {error}")
                    rows.extend(failed_rows(cell_identity, subtask, context, settings.repeats, error))
                    progress.say(f"{label}: out of device memory, recorded as failed")
                    torch.cuda.empty_cache()
                    continue
                report.rows.append(row)
                rows.extend(cell_rows(cell_identity, subtask, row, settings.decode_steps))
                if writer is not None:
                    writer.maybe()
                progress.say(f"{label}: done in {time.monotonic() - began:.1f} s (prefill {row.prefill_ms:,.1f} ms, "
                             f"decode {row.eager_decode_ms:.2f} ms/token)")
    except KeyboardInterrupt:
        if writer is None:
            raise
        raise RunInterrupted(writer.finish(complete=False), len(rows), writer.problem) from None
    except BaseException:
        if writer is not None:
            writer.finish(complete=False)  # whatever went wrong, the finished rows are kept, marked partial
        raise
    finally:
        if hooks is not None:
            hooks.remove()
    if writer is not None:
        report.path = writer.finish(complete=True)
        report.problem, report.written = writer.problem, len(rows)
    return report


def report_json(report: PerfReport) -> dict[str, Any]:
    """What `--json` writes: the floors, the hardware and every cell with its repeats (NaN never appears)."""
    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {key: clean(item) for key, item in value.items()}
        if isinstance(value, list):
            return [clean(item) for item in value]
        return value

    cells = [{**dataclasses.asdict(row), "ttft_ms": row.ttft_ms, "tokens_per_s": row.tokens_per_s}
             for row in report.rows]
    return clean({"floors": dataclasses.asdict(report.floors), "hardware": report.hardware, "model": report.model,
                  "dtype": report.dtype, "timer": report.timer, "rows": cells,
                  "failures": report.failures, "path": None if report.path is None else str(report.path)})
