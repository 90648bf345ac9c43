"""The `cachebench` command line. Heavy modules are imported inside the commands, so `--help` starts fast.

Exit codes: 0 success, 1 a run finished with failed rows (or `gate` found a regression), 2 bad input (one line on
stderr), 130 interrupted.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import shutil
import signal
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer

from cachebench.errors import RunInterrupted, UsageError
from cachebench.perf_cli import register as register_perf
from cachebench.sweep_cli import register as register_sweep

# rich_markup_mode=None: click's plain help wraps long option names onto their own line where rich's boxed table
# cuts them short at 80 columns ("--no-golden-hist…"), and it spares `--help` the import of rich.
app = typer.Typer(
    help="Benchmark and evaluation suite for LLM caching methods.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
list_app = typer.Typer(help="List what can be run.", no_args_is_help=True)
app.add_typer(list_app, name="list")
register_sweep(app)
register_perf(app)


class _RichProgress:
    """A rich progress bar over a task's turns, with the current episode in its description. It appears only once
    the first task starts, so an error found while checking the input is the only line on stderr."""

    def __init__(self, console: Any) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("turns"),
                   TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
        self._progress = Progress(*columns, console=console, transient=False)
        self._started = False
        self._bar: Any = None
        self._name = ""

    def task_started(self, name: str, turns: int) -> None:
        if not self._started:
            self._progress.start()
            self._started = True
        self._name = name
        self._bar = self._progress.add_task(name, total=turns)

    def episode_started(self, index: int, total: int) -> None:
        self._progress.update(self._bar, description=f"{self._name} · episode {index + 1}/{total}")

    def turn_done(self) -> None:
        self._progress.advance(self._bar)

    def stop(self) -> None:
        if self._started:
            self._progress.stop()


def _check_names(method: str, task: str, params: list[str], include: tuple[str, ...] = (), data: str | None = None,
                 mode: str | None = None) -> None:
    """Refuse an unknown method or task, or a bad --param, from the manifest and the task YAMLs alone: a typo is
    reported in a fraction of a second instead of after torch and transformers have loaded (seconds). The task
    registry is imported only once the method is known: it pulls in pyarrow (a fifth of a second)."""
    from cachebench.method_manifest import METHODS, check_params

    plugin = None
    if method not in METHODS:  # a plugin (import path, installed entry point) is imported; a typo is refused
        from cachebench.registry import method_class

        plugin = method_class(method)
    from cachebench.taskspec import check_data, check_mode, resolve_tasks

    check_data(data, resolve_tasks(task, include), task)  # --data on the wrong task costs no torch import
    check_mode(mode)
    if plugin is None:
        check_params(method, params)
    else:
        from cachebench.params import parse_params

        parse_params(plugin.Params, params, owner=plugin.name)


@app.command("eval")
def eval_command(
    method: Annotated[str, typer.Option(help="Cache method (see `cachebench list methods`).")],
    task: Annotated[str, typer.Option(help="Task or task group (see `cachebench list tasks`).")],
    param: Annotated[list[str] | None, typer.Option(help="Method parameter as name=value; repeatable.")] = None,
    model: Annotated[str, typer.Option(help="`embedded` (SmolLM2-135M-Instruct, offline), a local folder, a hub "
                                            "id, or random:<preset|config.json>.")] = "embedded",
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.")] = "auto",
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda or cuda:N.")] = "auto",
    attn_impl: Annotated[str, typer.Option(help="Attention implementation: sdpa, eager, flash_attention_2…")] = "sdpa",
    mode: Annotated[str | None, typer.Option(help="multi-turn or multi-request (default: the task's).")] = None,
    golden_history: Annotated[bool, typer.Option(help="Multi-turn: append reference answers, not the model's "
                                                      "own.")] = False,
    context_tokens: Annotated[int | None, typer.Option(help="Target context length of generated tasks.")] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many episodes per task.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for generated data (and torch).")] = 0,
    out: Annotated[Path, typer.Option(help="Directory for the run's Parquet file.")] = Path("results"),
    truncate: Annotated[str, typer.Option(help="Context longer than the model's window: error, or middle "
                                               "(keep head and tail, recorded in the rows).")] = "error",
    max_new_tokens: Annotated[int | None, typer.Option(help="Override the task's generation length.")] = None,
    data: Annotated[str | None, typer.Option(help="Local file in the real dataset's format, instead of the "
                                                  "hub (hub-backed tasks).")] = None,
    compression: Annotated[str, typer.Option(help="When a compressing method runs: query-agnostic (the context "
                                                  "is compressed before any question) or query-aware (the first "
                                                  "question is part of the compressed prefill).")] = "query-agnostic",
    embedder: Annotated[str, typer.Option(help="Semantic caches: `embedded` (all-MiniLM-L6-v2, offline), a local "
                                               "sentence-transformers folder or a hub name.")] = "embedded",
    llm_cost_ms: Annotated[str | None, typer.Option(help="Semantic caches: the LLM's cost per request in ms, one "
                                                         "number or category=ms pairs (default: measured with "
                                                         "--model).")] = None,
    pair_protocol: Annotated[str | None, typer.Option(help="Semantic pair tasks: retrieval (insert every first "
                                                           "item, then look up every second) or pairwise (each pair "
                                                           "on its own); default: the task's.")] = None,
    embedding: Annotated[str, typer.Option(help="Semantic caches: online (each request embedded when it arrives, "
                                                "timed per request) or precomputed (one batch up front, its mean "
                                                "time charged to each request).")] = "online",
    embed_batch: Annotated[int, typer.Option(help="Semantic caches, online embedding: requests embedded together, "
                                                  "as a serving system's micro-batch.")] = 1,
    requests: Annotated[int | None, typer.Option(help="Generated semantic tasks: how many requests (pairs) to "
                                                      "generate; classes and users scale with it.")] = None,
    include_path: Annotated[list[str] | None, typer.Option(help="A folder of your own task YAMLs (searched "
                                                                "recursively); repeatable.")] = None,
    model_args: Annotated[list[str] | None, typer.Option(help="key=value settings for the model's "
                                                              "from_pretrained, comma-separated (revision=main,"
                                                              "trust_remote_code=true); repeatable.")] = None,
    shard: Annotated[str | None, typer.Option(help="Run shard I/N of each task's episodes (I counted from 0): a "
                                                   "contiguous block, N shards together are the whole run; KV "
                                                   "tasks. Rows record it.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or table; print the file "
                                                              "path.")] = False,
) -> None:
    """Run a cache method on a task with the embedded model (or --model) and write one Parquet row per turn (KV)
    or per request (semantic caches). METHOD may be a plugin's package.module:Class; TASK a task YAML's path."""
    _check_names(method, task, list(param or ()), tuple(include_path or ()), data, mode)
    from cachebench.shards import parse_shard

    shard_pair = None if shard is None else parse_shard(shard)
    if model_args:
        from cachebench.models.loading import parse_model_args

        parse_model_args(model_args)  # refused in one line before anything loads
    from rich.console import Console

    from cachebench.eval_run import EvalRequest, run_eval

    request = EvalRequest(
        method=method, task=task, params=tuple(param or ()), model=model, dtype=dtype, device=device,
        attn_impl=attn_impl, mode=mode, golden_history=golden_history, context_tokens=context_tokens, limit=limit,
        seed=seed, out=out, truncate=truncate, max_new_tokens=max_new_tokens, data=data,
        compression=compression, embedder=embedder, llm_cost=llm_cost_ms, include_path=tuple(include_path or ()),
        model_args=tuple(model_args or ()), pair_protocol=pair_protocol, embedding=embedding,
        embed_batch=embed_batch, requests=requests, shard=shard_pair,
    )
    console = Console(stderr=True)
    progress = None if quiet else _RichProgress(console)
    try:
        outcome = run_eval(request, progress)
    finally:
        if progress is not None:
            progress.stop()
    if outcome.path is None and outcome.problem is None:
        raise UsageError("the run produced no rows")
    if outcome.path is not None:
        if not quiet:
            from cachebench.show import console_for_tables, show

            show([outcome.path], console_for_tables())
            print(f"wrote {len(outcome.rows)} rows to {outcome.path}", file=sys.stderr)
        else:
            print(outcome.path)
    for warning in outcome.warnings or ():  # plain lines: a message is one line however long, never wrapped
        print(f"warning: {warning}", file=sys.stderr)
    if outcome.problem:
        print(f"error: {outcome.problem}", file=sys.stderr)
        raise typer.Exit(1)
    if outcome.errors:
        first = next(row["error"] for row in outcome.rows if row["error"])
        print(f"{outcome.errors} rows failed; first error: {first}", file=sys.stderr)
        raise typer.Exit(1)


@app.command("show")
def show_command(
    paths: Annotated[list[Path], typer.Argument(help="Result files or directories (searched recursively).")],
    false_hit_ms: Annotated[float | None, typer.Option(help="Semantic caches: the cost of a wrong (false or stale) "
                                                            "hit in the cost model (default: the LLM's cost).")]
    = None,
    output_format: Annotated[str, typer.Option("--format", help="table (terminal), markdown (paper/README tables), "
                                                                 "csv or json (one record per cell and category).")]
    = "table",
) -> None:
    """Print a table per task: KV methods with score, 95% bootstrap interval, TTFT and KV size; semantic caches
    per category with hit/error rates, F-scores, stale hits, lookup latency and the break-even hit rate."""
    from cachebench.show import FORMATS, console_for_tables, show

    if false_hit_ms is not None and not (math.isfinite(false_hit_ms) and false_hit_ms >= 0):
        raise UsageError(f"--false-hit-ms must be a finite number >= 0, got {false_hit_ms}")
    if output_format not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {output_format!r}")
    show(paths, console_for_tables(), false_hit_ms, output_format)


@app.command("upgrade")
def upgrade_command(
    paths: Annotated[list[Path], typer.Argument(help="Result files or directories (searched recursively).")],
) -> None:
    """Rewrite result files of older schema versions in the current one, in place (atomically), so a folder reads
    with one line of pandas or DuckDB; current files are left as they are."""
    from cachebench.upgrade import upgrade

    done = upgrade(paths)
    for file, version in done:
        print(f"upgraded {file} (schema version {version})")
    print(f"{len(done)} file(s) upgraded", file=sys.stderr)


@app.command("leaderboard")
def leaderboard_command(
    paths: Annotated[list[Path], typer.Argument(help="Result files or directories (searched recursively).")],
    out: Annotated[Path, typer.Option(help="Directory for index.html (created if missing).")] = Path("leaderboard"),
) -> None:
    """Write a self-contained HTML leaderboard (tables, SVG charts, provenance) of the result files to OUT/index.html:
    it opens from file:// with no network."""
    try:
        from cachebench.leaderboard import build_site
    except ImportError as exc:
        raise UsageError(f"the leaderboard needs the report extra: pip install 'cachebench[report]' ({exc})") from None
    print(build_site(paths, out))


@app.command("gate")
def gate_command(
    baseline: Annotated[list[Path], typer.Option(help="Baseline result files or directories; repeatable.")],
    candidate: Annotated[list[Path], typer.Option(help="Candidate result files or directories; repeatable.")],
    tolerance: Annotated[float, typer.Option(help="Score drop (absolute) that is tolerated.")] = 0.02,
    confidence: Annotated[float, typer.Option(help="Confidence of the bootstrap interval of the difference.")] = 0.95,
    max_ttft_ratio: Annotated[float | None, typer.Option(help="Fail a cell whose mean request TTFT grew by more than "
                                                              "this factor.")] = None,
    max_kv_ratio: Annotated[float | None, typer.Option(help="Fail a cell whose mean KV bytes grew by more than this "
                                                            "factor.")] = None,
    max_missing: Annotated[float, typer.Option(help="Fail a cell when more than this fraction (0 to 1) of its "
                                                    "baseline items is absent from the candidate.")] = 0.0,
    allow_missing: Annotated[bool, typer.Option(help="Baseline cells and items absent from the candidate do not fail "
                                                     "(any --max-missing).")] = False,
    allow_new_errors: Annotated[bool, typer.Option(help="Rows failing only in the candidate do not fail.")] = False,
    allow_partial: Annotated[bool, typer.Option(help="Judge the cells of a partial candidate run (killed or "
                                                     "interrupted) instead of failing them.")] = False,
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples.")] = 2000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the report as JSON here.")] = None,
) -> None:
    """Compare a candidate run with a baseline cell by cell (paired bootstrap on the same items); exit 1 when a cell
    regressed or cannot be judged (items missing, too few episodes, NaN scores, a partial candidate run), 2 on
    unusable input. Prints a Markdown report fit for a pull-request comment."""
    from cachebench.gate import GateOptions
    from cachebench.gate import gate_command as run_gate_command

    options = GateOptions(tolerance=tolerance, confidence=confidence, max_ttft_ratio=max_ttft_ratio,
                          max_kv_ratio=max_kv_ratio, allow_missing=allow_missing, max_missing=max_missing,
                          allow_new_errors=allow_new_errors, allow_partial=allow_partial, resamples=resamples,
                          seed=seed)
    code = run_gate_command(baseline, candidate, options, json_path)
    if code:
        raise typer.Exit(code)


@app.command("calibrate")
def calibrate_command(
    task: Annotated[str, typer.Option(help="One semantic task (see `cachebench list tasks`) whose labelled requests "
                                           "fit the thresholds.")],
    out: Annotated[Path, typer.Option(help="The policy YAML to write (for category-aware's --param policy=FILE).")],
    seed: Annotated[int, typer.Option(help="Seed of a generated task: fit on a held-out seed, score on another.")]
    = 1,
    limit: Annotated[int | None, typer.Option(help="At most this many requests (pairs).")] = None,
    data: Annotated[str | None, typer.Option(help="Local file of the task's record shape.")] = None,
    pair_protocol: Annotated[str | None, typer.Option(help="Pair tasks: retrieval or pairwise (default: the "
                                                           "task's).")] = None,
    embedder: Annotated[str, typer.Option(help="`embedded` (all-MiniLM-L6-v2, offline), a local "
                                               "sentence-transformers folder or a hub name.")] = "embedded",
    include_path: Annotated[list[str] | None, typer.Option(help="A folder of your own task YAMLs; repeatable.")]
    = None,
) -> None:
    """Fit category-aware's per-category similarity thresholds (best F0.5 over 0.50..0.99) on a semantic task's
    labelled requests and write them as a policy YAML; categories that cannot be fitted keep the built-in entry."""
    if out.is_dir():
        raise UsageError(f"--out {out}: is a directory; give the policy file's path")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: folder {out.parent} does not exist")
    from cachebench.semantic.calibrate import calibrate, write_policy_yaml

    found = calibrate(task, data=data, seed=seed, limit=limit, embedder=embedder,
                      include_path=tuple(include_path or ()), pair_protocol=pair_protocol)
    header = f"cachebench calibrate --task {found.task} --seed {found.seed} ({found.mode}): best F0.5 per category"
    write_policy_yaml(found.policy, out, header=header)
    for name, fit in sorted(found.categories.items()):
        if fit.threshold is not None:
            rates = fit.rates[fit.threshold]
            print(f"{name}: threshold {fit.threshold:.2f} (F0.5 {rates.f05:.3f}, hit {100 * rates.hit_rate:.1f}%, "
                  f"error {100 * rates.error_rate:.1f}%, n {rates.n})", file=sys.stderr)
    for note in found.notes:
        print(f"note: {note}", file=sys.stderr)
    print(out)


def _width() -> int:
    """The terminal's width (COLUMNS when set; 80 when output is not a terminal)."""
    return shutil.get_terminal_size((80, 24)).columns


def _fit(text: str, width: int) -> str:
    """`text` on one line of at most `width` characters, cut at a word with an ellipsis when longer."""
    if len(text) <= width:
        return text
    cut = text[: max(width - 1, 0)].rsplit(" ", 1)[0].rstrip(" ,;:(")
    return cut + "…"


def _wrap(text: str, width: int, indent: str) -> list[str]:
    """`text` wrapped at spaces only, so that a name, path or option is never split."""
    return textwrap.wrap(text, width, initial_indent=indent, subsequent_indent=indent, break_long_words=False,
                         break_on_hyphens=False) or [indent.rstrip()]


@list_app.command("methods")
def list_methods(
    name: Annotated[str | None, typer.Argument(help="A method: show its summary and every parameter.")] = None,
) -> None:
    """Each registered method on one line (name, track, summary); with NAME, that method's parameters."""
    from cachebench.method_manifest import METHODS, method_spec

    width = _width()
    if name is not None:
        spec = method_spec(name) if name in METHODS else _plugin_spec(name)
        print("\n".join(_describe_method(spec, width)))
        return
    from cachebench.registry import ENTRY_POINT_GROUP, installed_methods, method_names

    installed = installed_methods()
    specs = [*sorted(METHODS.values(), key=lambda s: s.name),
             *(_plugin_spec(other) for other in sorted(set(method_names()) - set(METHODS)))]
    column = max(len(spec.name) for spec in specs) + 2
    print(_fit(f"{'method':<{column}}{'track':<10}summary", width))
    for spec in specs:
        origin = ("" if spec.name in METHODS else f" [plugin: {installed[spec.name]}]" if spec.name in installed
                  else " [built-in, not in the method manifest]")
        print(_fit(f"{spec.name:<{column}}{spec.track:<10}{spec.summary}{origin}", width))
    print(_fit(f"parameters of one: cachebench list methods NAME; plugins: --method package.module:Class or the "
               f"{ENTRY_POINT_GROUP} entry-point group", width))


def _plugin_spec(name: str) -> Any:
    """A plugin's manifest-shaped description, read from its class (imported)."""
    import dataclasses

    from cachebench.method_manifest import MethodSpec, ParamSpec
    from cachebench.params import infrastructure_fields
    from cachebench.registry import method_class

    cls = method_class(name)
    infrastructure = infrastructure_fields(cls.Params)
    params = tuple(ParamSpec(f.name, f.type, f.default, f.metadata.get("help", ""),
                             infrastructure=f.name in infrastructure) for f in dataclasses.fields(cls.Params))
    return MethodSpec(cls.name, cls.track, cls.summary, params)


def _describe_method(spec: Any, width: int) -> list[str]:
    """The lines of `list methods NAME`: summary, then each parameter with its type, default, bounds and help."""
    from cachebench.method_manifest import METHODS, params_class
    from cachebench.params import describe_params
    from cachebench.registry import method_class

    track = "KV-cache method" if spec.track == "kv" else "semantic response cache"
    lines = [f"{spec.name} ({track})", *_wrap(spec.summary, width, "  "), ""]
    infos = describe_params(params_class(spec.name) if spec.name in METHODS else method_class(spec.name).Params)
    if not infos:
        return [*lines, "parameters: none"]
    infrastructure = {p.name for p in spec.params if p.infrastructure}
    lines.append("parameters (--param name=value):")
    for info in infos:
        notes = [note for note in (info.constraint, "infrastructure" if info.name in infrastructure else "") if note]
        head = f"{info.name}: {info.type_name} = {info.default!r}" + (f"  ({'; '.join(notes)})" if notes else "")
        lines += _wrap(head, width, "  ") + _wrap(info.help, width, "      ")
    for first, second in spec.exclusive:
        lines += _wrap(f"give {first} or {second}, not both.", width, "")
    if infrastructure:
        lines += _wrap("infrastructure: where or how big the storage is; recorded with each row, but it does not "
                       "make a separate result cell.", width, "")
    return lines


@list_app.command("tasks")
def list_tasks() -> None:
    """Each task with its family, source, default mode and metric, and the groups that run several."""
    from cachebench.taskspec import all_tasks, groups

    width = _width()
    specs = all_tasks()
    lines = []
    for spec in specs.values():
        metric = spec.metric + "".join(f"; {c}: {m}" for c, m in spec.metric_by_category.items())
        lines += _wrap(f"{spec.name}  [{spec.mode}, {metric}]", width, "")
        lines += _wrap(spec.source, width, "    ") + _wrap(spec.summary, width, "    ")
    lines.append("")
    for group, members in groups(specs).items():
        lines += textwrap.wrap(f"group {group}: {', '.join(members)}", width, subsequent_indent="    ",
                               break_long_words=False, break_on_hyphens=False)
    print("\n".join(lines))


def _click_exception_types(name: str) -> tuple[type[BaseException], ...]:
    """Click's exception class `name`, from typer's vendored copy and from click itself (typer versions differ)."""
    found = []
    for module_name in ("typer._click.exceptions", "click.exceptions"):
        try:
            found.append(getattr(importlib.import_module(module_name), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def main() -> None:
    """Entry point: bad input becomes one line on stderr and exit code 2, never a traceback. Libraries' own log
    lines, Python warnings and progress bars are silenced first (CACHEBENCH_DEBUG=1 keeps them), so that line is
    the only one: a transformers notice or a datasets bar before it would hide it among noise."""
    if not os.environ.get("CACHEBENCH_DEBUG"):
        quiet = {"TRANSFORMERS_VERBOSITY": "error", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
                 "DATASETS_VERBOSITY": "error", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
                 "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_VERBOSITY": "error"}
        for name, value in quiet.items():
            os.environ.setdefault(name, value)  # read by the libraries when they are first imported
        warnings.simplefilter("ignore")
        logging.getLogger().setLevel(logging.ERROR)  # loggers without handlers print warnings via logging's last resort
    # A signal mask is inherited: a parent that had SIGINT or SIGTERM blocked (a thread-heavy launcher) would make
    # Ctrl-C and `kill` do nothing here, and a run meant to stop would go on. Handlers set to be ignored (a shell's
    # background job) are left as they are.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    abort, click_error = _click_exception_types("Abort"), _click_exception_types("ClickException")
    try:
        code = app(standalone_mode=False)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except RunInterrupted as exc:
        print(str(exc), file=sys.stderr)
        sys.exit(130)
    except (KeyboardInterrupt, *abort):
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except click_error as exc:
        message = exc.format_message()  # type: ignore[attr-defined]
        if message:  # empty when a bare command printed its help
            print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:
        if os.environ.get("CACHEBENCH_DEBUG"):
            raise
        message = f"internal error: {type(exc).__name__}: {exc}".splitlines()[0]
        print(f"{message} (set CACHEBENCH_DEBUG=1 for the traceback)", file=sys.stderr)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
