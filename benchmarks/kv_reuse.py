"""Time to first token saved and quality kept by the KV-reuse methods, each against `full` in the same run.

Runs full prefill, prefix caching, naive chunk concatenation, training-free KVLink and CacheBlend at several
recompute ratios on the `rag` task (documents drawn from a shared pool, so they recur across requests in other
orders), with one model load. Every row goes to one Parquet file (re-written after each method); the printed
Markdown table gives per method the score with its 95% interval, the request TTFT (context prefill + question +
first token) and its ratio to full, and how much of the context was reused and recomputed, and from which tier.

    .venv/bin/python benchmarks/kv_reuse.py                           # the committed run
    .venv/bin/python benchmarks/kv_reuse.py --limit 4 --ratios 0.15    # a quick look
    .venv/bin/python benchmarks/kv_reuse.py --from-parquet results/benchmarks/kv_reuse.parquet

The grid is also a sweep file, `benchmarks/sweeps/kv_reuse.yaml`, which runs resumably (and on Ray) with
`cachebench sweep run benchmarks/sweeps/kv_reuse.yaml --out results/sweeps/kv_reuse`; `--from-parquet` reads that
folder too.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

RATIOS = [0.05, 0.15, 0.3]
OTHERS = ["prefix", "naive-concat", "kvlink"]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="rag.passages")
    parser.add_argument("--limit", type=int, default=20, help="episodes per method")
    parser.add_argument("--mode", default="multi-request")
    parser.add_argument("--ratios", nargs="+", type=float, default=RATIOS, help="CacheBlend recompute ratios")
    parser.add_argument("--methods", nargs="+", default=OTHERS, help="reuse methods besides CacheBlend")
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--context-tokens", type=int)
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks/kv_reuse.parquet"))
    parser.add_argument("--from-parquet", type=Path, help="print the table of an earlier run's file; run nothing")
    return parser.parse_args(argv)


def _label(row: dict[str, Any]) -> str:
    if row["method"] != "cacheblend":
        return row["method"]
    import json

    return f"cacheblend {json.loads(row['method_params'])['recompute_ratio']}"


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    from cachebench.results import to_table
    from cachebench.stats import cluster_bootstrap_ci

    cells: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in to_table(rows).to_pylist():  # the written rows: request_ttft_ms derived as every reader has it
        if row["error"] is None:
            cells[_label(row)].append(row)
    out = {}
    for label, group in cells.items():
        score, low, high = cluster_bootstrap_ci([r["score"] for r in group], [r["episode_id"] for r in group])
        reused = sum(r["reused_tokens"] for r in group)
        tiers = {t: sum(r[f"reused_{t}_tokens"] or 0 for r in group) for t in ("device", "cpu", "disk")}
        out[label] = {
            "score": score, "low": low, "high": high, "n": len(group),
            "ttft": statistics.fmean(r["request_ttft_ms"] for r in group),
            "reused": reused / sum(r["context_tokens"] for r in group),
            "recomputed": sum(r["recomputed_tokens"] for r in group) / reused if reused else 0.0,
            "tiers": ", ".join(f"{t} {v / reused:.0%}" for t, v in tiers.items() if v) if reused else "-",
            "load_ms": statistics.fmean((r["reuse_load_ms"] or 0.0) for r in group),
        }  # fmt: skip
    return out


def by_category(rows: list[dict[str, Any]]) -> str:
    """Mean score per turn category (on rag.passages: passage, fact, two-hop), methods as rows."""
    cells: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row["error"] is None:
            cells[_label(row)][row["category"]].append(row["score"])
    categories = sorted({c for per in cells.values() for c in per})
    lines = ["| method | " + " | ".join(categories) + " |", "|---|" + "---|" * len(categories)]
    for label in _ordered(cells):
        lines.append(f"| {label} | " + " | ".join(f"{statistics.fmean(cells[label][c]):.3f}" for c in categories)
                     + " |")
    return "\n".join(lines)


def _ordered(labels: Any) -> list[str]:
    order = ["full", "prefix", "naive-concat", "kvlink", *sorted(k for k in labels if k.startswith("cacheblend"))]
    return [k for k in order if k in labels]


def render(summary: dict[str, dict[str, Any]]) -> str:
    base = summary.get("full")
    lines = ["| method | score | 95% CI | n | request TTFT ms | TTFT / full | context reused | reused recomputed "
             "| store load ms | tiers |", "|---|---|---|---|---|---|---|---|---|---|"]
    for label in _ordered(summary):
        cell = summary[label]
        ratio = f"{cell['ttft'] / base['ttft']:.2f}x" if base else "n/a"
        lines.append(
            f"| {label} | {cell['score']:.3f} | {cell['low']:.3f}–{cell['high']:.3f} | {cell['n']} | "
            f"{cell['ttft']:,.0f} | {ratio} | {cell['reused']:.0%} | {cell['recomputed']:.1%} | "
            f"{cell['load_ms']:.1f} | {cell['tiers']} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.from_parquet:
        import pyarrow.parquet as pq

        rows = pq.read_table(args.from_parquet).to_pylist()
        print(render(summarize(rows)) + "\n\n" + by_category(rows))
        return 0
    from cachebench.errors import UsageError
    from cachebench.eval_run import EvalRequest, run_eval
    from cachebench.models.loading import load_model
    from cachebench.provenance import hardware
    from cachebench.registry import build_method
    from cachebench.results import write_atomic

    model = load_model(args.model, "auto", args.device, "sdpa")
    plan = [("full", ())] + [(m, ()) for m in args.methods]
    plan += [("cacheblend", (f"recompute_ratio={r}",)) for r in args.ratios]
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as scratch:
        for name, params in plan:
            request = EvalRequest(method=name, task=args.task, params=params, model=args.model, device=args.device,
                                  mode=args.mode, limit=args.limit, out=Path(scratch),
                                  context_tokens=args.context_tokens)
            try:
                outcome = run_eval(request, model=model, method=build_method(name, list(params)))
            except UsageError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            rows.extend(outcome.rows)
            write_atomic(rows, args.out)
            print(f"[{time.monotonic() - started:6.0f}s] {name} {' '.join(params)}", file=sys.stderr, flush=True)
    print(f"model {model.name} ({model.dtype_name}) on {hardware(model.device)}, task {args.task}, {args.mode}, "
          f"{args.limit} episodes\n")
    print(render(summarize(rows)) + "\n\n" + by_category(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
