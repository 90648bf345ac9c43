"""Quality versus budget for the KV-compression methods, each relative to `full` measured in the same run.

Runs every method at each compression ratio on the default multiturn task, in both SCBench modes and both
compression settings, with one model load. All rows go to one Parquet file (re-written after every run, so an
interrupted sweep keeps what finished); the printed Markdown table gives, per method and ratio, the score and
each cost as a ratio to `full` under the same mode and setting.

    .venv/bin/python benchmarks/kv_eviction.py                      # the committed sweep (about 55 min on 2 CPU cores)
    .venv/bin/python benchmarks/kv_eviction.py --limit 2 --ratios 0.5 --methods snapkv   # a quick look
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

METHODS = ["streamingllm", "h2o", "snapkv", "pyramidkv", "cake", "windowkv", "tokenselect", "razorattention"]
RATIOS = [0.25, 0.5, 0.75, 0.9]
MODES = ["multi-turn", "multi-request"]
SETTINGS = ["query-agnostic", "query-aware"]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="multiturn")
    parser.add_argument("--limit", type=int, default=10, help="episodes per run (each has 4 turns)")
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--ratios", nargs="+", type=float, default=RATIOS)
    parser.add_argument("--modes", nargs="+", default=MODES)
    parser.add_argument("--settings", nargs="+", default=SETTINGS)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks/kv_eviction.parquet"))
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    parser.add_argument("--from-parquet", type=Path, help="print the tables of an earlier sweep's file; run nothing")
    return parser.parse_args(argv)


def mean(values: list[float]) -> float:
    finite = [v for v in values if v == v]  # drop NaN (a reply that ended at its first token has no decode time)
    return statistics.fmean(finite) if finite else float("nan")


def summarize(rows: list[dict[str, Any]]) -> dict[tuple, dict[str, float]]:
    cells: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        ratio = json.loads(row["method_params"]).get("ratio") if row["method"] != "full" else 0.0
        cells[(row["mode"], row["compression"], row["method"], ratio)].append(row)
    return {
        key: {
            "score": mean([r["score"] for r in group]),
            "kv_bytes": mean([r["kv_bytes"] for r in group]),
            "prefill_ms": mean([r["prefill_ms"] for r in group]),
            "ttft_ms": mean([r["ttft_ms"] for r in group]),
            "decode_ms": mean([r["decode_ms_per_token"] for r in group]),
            "n": len(group),
        }
        for key, group in cells.items()
    }


def table(summary: dict[tuple, dict[str, float]], extras: dict[tuple, str]) -> str:
    lines = ["| mode | compression | method | ratio | score | full's score | kv_bytes | prefill | TTFT | "
             "decode/token | n | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (mode, setting, method, ratio), cell in sorted(summary.items()):
        if method == "full":
            continue
        base = summary.get((mode, setting, "full", 0.0))
        if base is None:
            continue

        def rel(name: str, cell: dict[str, float] = cell, base: dict[str, float] = base) -> str:
            return f"{cell[name] / base[name]:.2f}x" if base[name] else "n/a"

        lines.append(
            f"| {mode} | {setting} | {method} | {ratio} | {cell['score']:.3f} | {base['score']:.3f} | "
            f"{rel('kv_bytes')} | {rel('prefill_ms')} | {rel('ttft_ms')} | {rel('decode_ms')} | {cell['n']} | "
            f"{extras.get((mode, setting, method, ratio), '')} |"
        )
    return "\n".join(lines)


def score_grid(summary: dict[tuple, dict[str, float]]) -> str:
    """Scores only: one row per mode, setting and method, one column per ratio, `full` alongside."""
    ratios = sorted({key[3] for key in summary if key[2] != "full"})
    lines = ["| mode | compression | method | full | " + " | ".join(f"ratio {r}" for r in ratios) + " |",
             "|---|---|---|---|" + "---|" * len(ratios)]
    groups = sorted({key[:3] for key in summary if key[2] != "full"})
    for mode, setting, method in groups:
        base = summary.get((mode, setting, "full", 0.0), {}).get("score", float("nan"))
        cells = [summary.get((mode, setting, method, r), {}).get("score", float("nan")) for r in ratios]
        lines.append(f"| {mode} | {setting} | {method} | {base:.3f} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    return "\n".join(lines)


def method_note(method: Any) -> str:
    """TokenSelect's per-step selection cost, which its rows' decode time includes but does not break out."""
    steps = getattr(method, "selection_steps", 0)
    if not steps:
        return ""
    per_layer_step = getattr(method, "selection_ms_total", 0.0) / steps
    reused = getattr(method, "reused_selections", 0)
    return f"selection {per_layer_step:.2f} ms per layer per decode step, {reused / steps:.0%} reused"


def render(summary: dict[tuple, dict[str, float]], extras: dict[tuple, str]) -> str:
    return score_grid(summary) + "\n\n" + table(summary, extras)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.from_parquet:
        import pyarrow.parquet as pq

        rows = pq.read_table(args.from_parquet).to_pylist()
        print(render(summarize(rows), {}))
        return 0
    from cachebench.errors import UsageError
    from cachebench.eval_run import EvalRequest, run_eval
    from cachebench.models.loading import load_model
    from cachebench.registry import build_method
    from cachebench.results import write_atomic

    model = load_model(args.model, "auto", args.device, "sdpa")
    rows: list[dict[str, Any]] = []
    extras: dict[tuple, str] = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as scratch:
        for mode in args.modes:
            for setting in args.settings:
                plan = [("full", None)] + [(m, r) for m in args.methods for r in args.ratios]
                for name, ratio in plan:
                    params = () if ratio is None else (f"ratio={ratio}",)
                    request = EvalRequest(method=name, task=args.task, params=params, model=args.model,
                                          device=args.device, mode=mode, limit=args.limit, out=Path(scratch),
                                          compression=setting)
                    try:
                        method = build_method(name, list(params))
                        outcome = run_eval(request, model=model, method=method)
                    except UsageError as exc:
                        print(f"error: {exc}", file=sys.stderr)
                        return 2
                    rows.extend(outcome.rows)
                    note = method_note(method)
                    if note:
                        extras[(mode, setting, name, ratio)] = note
                    write_atomic(rows, args.out)
                    print(f"[{time.monotonic() - started:6.0f}s] {mode} {setting} {name} {ratio}: "
                          f"{mean([r['score'] for r in outcome.rows]):.3f}", file=sys.stderr, flush=True)
    text = render(summarize(rows), extras)
    from cachebench.provenance import hardware

    print(f"model {model.name} ({model.dtype_name}) on {hardware(model.device)}, {args.limit} episodes per run, "
          f"task {args.task}\n")
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
