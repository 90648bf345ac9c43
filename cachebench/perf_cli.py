"""`cachebench perf`: time and memory only, per method and context length, against floors measured at start on
the same device. A sub-command cli.py registers with `register(app)`; heavy imports stay inside the command."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from cachebench.errors import UsageError


def _method_spec(spec: str) -> tuple[str, list[str]]:
    """`snapkv:ratio=0.75,window=32` -> ("snapkv", ["ratio=0.75", "window=32"])."""
    name, _, params = spec.partition(":")
    return name, [p for p in params.split(",") if p]


def register(app: typer.Typer) -> None:
    @app.command("perf")
    def perf_command(
        model: Annotated[str, typer.Option(help="A model shape: random:<preset> (llama-3.1-8b, qwen2.5-7b, "
                                                "smollm2-135m), a folder, or embedded.")] = "random:llama-3.1-8b",
        method: Annotated[list[str] | None, typer.Option(help="Method, with parameters after a colon "
                                                               "(snapkv:ratio=0.75); repeatable.")] = None,
        context: Annotated[list[int] | None, typer.Option(help="Context length in tokens; repeatable.")] = None,
        batch_size: Annotated[int, typer.Option(help="Sequences decoded together (the context's cache copied).")] = 1,
        memory_budget_gib: Annotated[float | None, typer.Option(help="Instead of --batch-size: the largest batch "
                                                                     "whose weights + KV + activations fit.")] = None,
        repeats: Annotated[int, typer.Option(help="Timed prefills per cell (median).")] = 3,
        decode_steps: Annotated[int, typer.Option(help="Timed decode steps per cell (median).")] = 32,
        bucket: Annotated[int, typer.Option(help="Static cache capacity is rounded up to this.")] = 1024,
        dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16, float16.")] = "auto",
        device: Annotated[str, typer.Option(help="auto, cpu, cuda.")] = "auto",
        json_out: Annotated[Path | None, typer.Option("--json", help="Also write the rows and floors here.")] = None,
    ) -> None:
        """Prefill ms, decode ms per token (eager and CUDA graph), KV bytes, peak memory and throughput, each with
        its ratio to a floor measured on this device (bandwidth from a large copy, FLOP/s from a large matmul)."""
        from cachebench.perf.run import PerfSettings, run_perf

        contexts = tuple(context or [4096, 16384, 32768])
        if any(c < 16 for c in contexts):
            raise UsageError("--context must be at least 16 tokens")
        if batch_size < 1 or repeats < 1 or decode_steps < 1 or bucket < 1:
            raise UsageError("--batch-size, --repeats, --decode-steps and --bucket must be at least 1")
        if memory_budget_gib is not None and memory_budget_gib <= 0:
            raise UsageError("--memory-budget-gib must be positive")
        settings = PerfSettings(contexts=contexts, batch_size=batch_size, repeats=repeats, decode_steps=decode_steps,
                                bucket=bucket, memory_budget_bytes=None if memory_budget_gib is None
                                else int(memory_budget_gib * 2**30))
        report = run_perf(model, [_method_spec(spec) for spec in (method or ["full"])], settings, dtype, device)
        print(report.render())
        if json_out is not None:
            json_out.write_text(json.dumps({"floors": asdict(report.floors), "hardware": report.hardware,
                                            "rows": [asdict(row) for row in report.rows]}, indent=1))
            print(f"wrote {json_out}", file=sys.stderr)
