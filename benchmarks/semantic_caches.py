"""Every semantic cache on the generator's default stream: quality per category, the threshold sweep's trade-off
curve, and the cost model per store (in-memory, SQLite, Redis server, Chroma server), measured in one run.

Runs `exact`, `threshold` swept over 0.70–0.95, `category-aware`, `meancache` and `vcache` (all on the in-memory
HNSW index with in-memory documents: quality does not depend on the document store), then `category-aware` and
the best-F1 `threshold` setting on each store, where only time differs. The embedder (MiniLM) encodes the stream
once; the LLM's cost C per category is measured once with the embedded SmolLM2 (or set with --llm-cost-ms).
Prints Markdown tables; all rows go to one Parquet file.

    .venv/bin/python benchmarks/semantic_caches.py                     # the committed run (needs Redis; starts Chroma)
    .venv/bin/python benchmarks/semantic_caches.py --limit 400 --stores memory sqlite
    .venv/bin/python benchmarks/semantic_caches.py --from-parquet results/benchmarks/semantic.parquet

The grid is also a sweep file, `benchmarks/sweeps/semantic.yaml`, which runs resumably (and on Ray) with
`cachebench sweep run benchmarks/sweeps/semantic.yaml --out results/sweeps/semantic`; `--from-parquet` reads that
folder too.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

THRESHOLDS = [0.70, 0.75, 0.80, 0.85, 0.90, 0.95]
OTHERS = ["exact", "category-aware", "meancache", "vcache"]
STORES = ["memory", "sqlite", "redis", "chroma"]
OTHER_COSTS = [1000, 200, 50, 20]  # ms: a CPU-served small model down to a fast hosted API


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="semantic.stream")
    parser.add_argument("--limit", type=int, help="at most this many requests")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--thresholds", nargs="+", type=float, default=THRESHOLDS)
    parser.add_argument("--methods", nargs="+", default=OTHERS)
    parser.add_argument("--stores", nargs="+", default=STORES, choices=STORES)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--chroma-url", help="a running Chroma server (default: start one in a temp folder)")
    parser.add_argument("--llm-cost-ms", help="set C instead of measuring it (\"800\" or \"code=900,...\")")
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks/semantic.parquet"))
    parser.add_argument("--from-parquet", type=Path, help="print the tables of an earlier run's file; run nothing")
    return parser.parse_args(argv)


def _label(key: dict[str, Any], store: str) -> str:
    """A cell as the tables name it: the method, a threshold's value, and the store where it is not in-memory (the
    cell itself leaves the store out: it changes time only, so the tables group rows by store first)."""
    label = key["method"]
    if label == "threshold":
        label += f" {json.loads(key['method_params'])['threshold']:.2f}"
    return label + ("" if store == "memory" else f" [{store}]")


def _cells_by_store(table: Any) -> dict[str, list[Any]]:
    """The semantic cells of each store's rows (cachebench.semantic.summary): in-memory first, then by name."""
    import pyarrow as pa

    from cachebench.semantic.summary import summarize_semantic

    stores = [json.loads(params).get("store", "memory") for params in table["method_params"].to_pylist()]
    return {store: summarize_semantic(table.filter(pa.array([s == store for s in stores])))
            for store in sorted(set(stores), key=lambda store: (store != "memory", store))}


def _pct(value: float) -> str:
    return "-" if value != value else f"{100 * value:.1f}"


def render(rows: list[dict[str, Any]]) -> str:
    import pyarrow as pa

    from cachebench.results import to_table
    from cachebench.semantic.report import ALL, tradeoff
    from cachebench.semantic.scoring import cost_model

    table = to_table(rows) if not isinstance(rows, pa.Table) else rows
    by_store = _cells_by_store(table)
    quality = by_store.get("memory", [])
    out = ["### Overall (warm-up excluded)", "",
           "| method | n | hit % | err % (95% CI) | precision | recall | F1 | F0.5 | stale % |",
           "|---|---|---|---|---|---|---|---|---|"]
    for cell in quality:
        score = next(s for s in cell.categories if s.category == ALL)
        r, ci = score.rates, score.intervals.get("error_rate", (float("nan"),) * 2)
        out.append(f"| {_label(cell.key, 'memory')} | {r.n} | {_pct(r.hit_rate)} | {_pct(r.error_rate)} ({_pct(ci[0])}–"
                   f"{_pct(ci[1])}) | {r.precision:.3f} | {r.recall:.3f} | {r.f1:.3f} | {r.f05:.3f} | "
                   f"{_pct(r.stale_rate)} |")
    categories = sorted({s.category for c in quality for s in c.categories if s.category != ALL})
    out += ["", "### Per category: hit % / err % / F1 / stale %", "",
            "| method | " + " | ".join(categories) + " |", "|---|" + "---|" * len(categories)]
    for cell in quality:
        by = {s.category: s.rates for s in cell.categories}
        parts = [f"{_pct(by[c].hit_rate)} / {_pct(by[c].error_rate)} / {by[c].f1:.2f} / {_pct(by[c].stale_rate)}"
                 if c in by else "-" for c in categories]
        out.append(f"| {_label(cell.key, 'memory')} | " + " | ".join(parts) + " |")
    curves = tradeoff(quality)
    if "threshold" in curves:
        found, area = curves["threshold"]
        out += ["", f"threshold sweep frontier area (mean best hit rate over error budgets up to the largest error "
                    f"measured): {area:.3f}; points (err %, hit %): "
                + ", ".join(f"({100 * e:.1f}, {100 * h:.1f})" for e, h in found)]
        for cell in quality:
            if cell.key["method"] == "threshold":
                continue
            r = next(s for s in cell.categories if s.category == ALL).rates
            out.append(f"- {_label(cell.key, 'memory')}: hit {_pct(r.hit_rate)} %, err {_pct(r.error_rate)} %; the "
                       f"threshold curve at that hit rate: err {_pct(_error_at(found, r.hit_rate))} %")
    stores = [(store, cell) for store, cells in by_store.items() for cell in cells
              if store != "memory" or cell.key["method"] == "category-aware"]
    out += ["", "### Cost per store (L = embedding + lookup per request; C = LLM cost; break-even hit rate h* = "
                "L / (C − F − q·P))", "",
            "| method [store] | category | lookup p50 ms | p95 ms | fetch p50 ms | L ms | C ms | h* | measured hit % | "
            "saving % of C | bytes/entry |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for store, cell in stores:
        for score in cell.categories:
            cost = score.cost
            if cost is None:
                continue
            h_star = "never" if cost.break_even == float("inf") else f"{100 * cost.break_even:.2f}%"
            out.append(f"| {_label(cell.key, store)} | {score.category} | {score.lookup_p50:.3f} | "
                       f"{score.lookup_p95:.3f} | {cost.fetch_ms:.3f} | {cost.overhead_ms:.2f} | {cost.llm_ms:.0f} | "
                       f"{h_star} | "
                       f"{_pct(score.rates.hit_rate)} | {_pct(cost.saving_share)} | "
                       f"{cell.bytes_per_entry:.0f} |")
    out += ["", "### Break-even hit rate h* over the whole stream at other LLM costs C (the measured L, F and q)", "",
            "| method [store] | L ms | F ms | " + " | ".join(f"h* at C = {c} ms" for c in OTHER_COSTS) + " |",
            "|---|---|---|" + "---|" * len(OTHER_COSTS)]
    for store, cell in stores:
        score = next(s for s in cell.categories if s.category == ALL)
        if score.cost is None:
            continue
        r, base = score.rates, score.cost
        rows_h = []
        for c in OTHER_COSTS:
            cost = cost_model(r.hit_rate, r.fp + r.stale, r.tp + r.fp, base.overhead_ms, base.fetch_ms, float(c))
            rows_h.append("never" if cost.break_even == float("inf") else f"{100 * cost.break_even:.1f}%")
        out.append(f"| {_label(cell.key, store)} | {base.overhead_ms:.2f} | {base.fetch_ms:.3f} | " + " | ".join(rows_h)
                   + " |")
    return "\n".join(out)


def _error_at(points: list[tuple[float, float]], hit_rate: float) -> float:
    """The threshold curve's error rate at a hit rate, interpolated linearly between sweep points."""
    ordered = sorted(points, key=lambda p: p[1])
    for (e0, h0), (e1, h1) in itertools.pairwise(ordered):
        if h0 <= hit_rate <= h1:
            return e0 if h1 == h0 else e0 + (e1 - e0) * (hit_rate - h0) / (h1 - h0)
    return float("nan")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.from_parquet:
        import pyarrow.parquet as pq

        print(render(pq.read_table(args.from_parquet).to_pylist()))
        return 0
    import torch

    from cachebench.errors import UsageError
    from cachebench.provenance import hardware
    from cachebench.registry import build_method
    from cachebench.results import write_atomic
    from cachebench.runs import EvalRequest
    from cachebench.semantic.embedder import load_embedder
    from cachebench.semantic.evaluate import run_semantic_eval
    from cachebench.semantic.servers import chroma_server
    from cachebench.taskspec import resolve_tasks

    specs = resolve_tasks(args.task)
    embedder = load_embedder()
    embedder.remember = True
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    llm_cost = args.llm_cost_ms
    with tempfile.TemporaryDirectory() as scratch, chroma_server(args.chroma_url, Path(scratch) / "chroma") as chroma:
        def run(name: str, params: list[str]) -> None:
            nonlocal llm_cost
            request = EvalRequest(method=name, task=args.task, limit=args.limit, seed=args.seed, out=Path(scratch),
                                  llm_cost=llm_cost)
            outcome = run_semantic_eval(request, specs, build_method(name, params), embedder=embedder)
            rows.extend(outcome.rows)
            if llm_cost is None:  # measured once, then set for the other runs
                costs = {row["category"]: row["llm_ms"] for row in outcome.rows}
                llm_cost = ",".join(f"{c}={v:.1f}" for c, v in sorted(costs.items()))
            write_atomic(rows, args.out)
            print(f"[{time.monotonic() - started:6.0f}s] {name} {' '.join(params)}", file=sys.stderr, flush=True)

        try:
            for threshold in args.thresholds:
                run("threshold", ["store=memory", f"threshold={threshold}"])
            for name in args.methods:
                run(name, ["store=memory"])
            best = max(args.thresholds, key=lambda t: _overall_f1(rows, t))
            servers = {"redis": [f"redis_url={args.redis_url}"], "chroma": [f"chroma_url={chroma}"]}
            for store in args.stores:
                if store == "memory":
                    continue
                for name, extra in (("category-aware", []), ("threshold", [f"threshold={best}"])):
                    run(name, [f"store={store}", *servers.get(store, []), *extra])
        except UsageError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    machine = hardware(torch.device("cpu"))
    print(f"{args.task}, seed {args.seed}, {len(rows)} rows, embedder {embedder.name} on {machine}; C per category: "
          f"{llm_cost}\n")
    print(render(rows))
    return 0


def _overall_f1(rows: list[dict[str, Any]], threshold: float) -> float:
    from cachebench.semantic.scoring import rates

    picked = [r for r in rows if r["method"] == "threshold" and not r["warmup"] and r["outcome"]
              and json.loads(r["method_params"])["threshold"] == threshold]
    return rates([r["outcome"] for r in picked], [bool(r["stale"]) for r in picked]).f1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
