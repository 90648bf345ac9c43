"""`cachebench perf`: time and memory only, per method and context length, against floors measured at start on
the same device; result rows (track `perf`) with --out. A sub-command cli.py registers with `register(app)`;
heavy imports stay inside the command."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from cachebench.errors import UsageError
from cachebench.params import INT64_MAX


def register(app: typer.Typer) -> None:
    @app.command("perf")
    def perf_command(
        model: Annotated[str, typer.Option(help="A model shape: random:<preset> (llama-3.1-8b, qwen2.5-7b, "
                                                "smollm2-135m), a folder, or embedded.")] = "random:llama-3.1-8b",
        method: Annotated[list[str] | None, typer.Option(help="KV-cache method (see `cachebench list methods`); "
                                                               "repeatable (default: full).")] = None,
        param: Annotated[list[str] | None, typer.Option(help="Method parameter as name=value, as in eval; "
                                                             "repeatable. With several methods it goes to each "
                                                             "that declares the name.")] = None,
        context: Annotated[list[int] | None, typer.Option(help="Context length in tokens; repeatable.")] = None,
        batch_size: Annotated[int, typer.Option(help="Sequences decoded together (the context's cache copied).")] = 1,
        memory_budget_gib: Annotated[float | None, typer.Option(help="Instead of --batch-size: the largest batch "
                                                                     "whose weights + KV + activations fit.")] = None,
        repeats: Annotated[int, typer.Option(help="Timed requests per cell (prefill, first token, decode); one "
                                                  "result row each, the table shows the median.")] = 3,
        decode_steps: Annotated[int, typer.Option(help="Timed decode steps per request (and of static decode).")]
        = 32,
        bucket: Annotated[int, typer.Option(help="Static cache capacity is rounded up to this.")] = 1024,
        dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16, float16.")] = "auto",
        device: Annotated[str, typer.Option(help="auto, cpu, cuda.")] = "auto",
        seed: Annotated[int, typer.Option(help="Seed of the random weights and token ids.")] = 0,
        out: Annotated[Path | None, typer.Option(help="Directory for the run's Parquet file of result rows "
                                                      "(track perf), read by show, leaderboard and gate.")] = None,
        json_out: Annotated[Path | None, typer.Option("--json", help="Also write the cells and floors here.")] = None,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines on stderr.")] = False,
    ) -> None:
        """Prefill ms, TTFT, decode ms per token (eager and CUDA graph), KV bytes, peak memory and throughput, each
        with its ratio to a floor measured on this device (bandwidth from a large copy, FLOP/s from a large
        matmul). Progress goes to stderr, one line per cell."""
        from cachebench.perf.run import PerfRequest, PerfSettings, Progress, report_json, run_perf

        contexts = tuple(context or [4096, 16384, 32768])
        if any(c < 16 for c in contexts):
            raise UsageError("--context must be at least 16 tokens")
        if batch_size < 1 or repeats < 1 or decode_steps < 1 or bucket < 1:
            raise UsageError("--batch-size, --repeats, --decode-steps and --bucket must be at least 1")
        if memory_budget_gib is not None and memory_budget_gib <= 0:
            raise UsageError("--memory-budget-gib must be positive")
        if not 0 <= seed <= INT64_MAX:
            raise UsageError(f"--seed must be between 0 and {INT64_MAX}, got {seed}")
        if json_out is not None and json_out.is_dir():
            raise UsageError(f"--json {json_out}: is a directory")
        settings = PerfSettings(contexts=contexts, batch_size=batch_size, repeats=repeats, decode_steps=decode_steps,
                                bucket=bucket, seed=seed, memory_budget_bytes=None if memory_budget_gib is None
                                else int(memory_budget_gib * 2**30))
        request = PerfRequest(model=model, methods=tuple(method or ["full"]), params=tuple(param or ()),
                              settings=settings, dtype=dtype, device=device, out=out)
        report = run_perf(request, Progress(enabled=not quiet))
        print(report.render())
        if json_out is not None:
            json_out.write_text(json.dumps(report_json(report), indent=1))
            print(f"wrote {json_out}", file=sys.stderr)
        if report.path is not None:
            print(f"wrote {report.written} rows to {report.path}", file=sys.stderr)
        if report.problem:
            print(f"error: {report.problem}", file=sys.stderr)
            raise typer.Exit(1)
        if report.failures:
            print(f"{len(report.failures)} cells failed; first error: {report.failures[0]}", file=sys.stderr)
            raise typer.Exit(1)
