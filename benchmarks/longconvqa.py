"""Long-conversation QA under a KV budget: accuracy per question type and prefill memory, EpiCache against
full, SnapKV and StreamingLLM, measured side by side in one run with one model load.

Part 1 runs every method at budgets that keep 10%, 25% and 50% of the history (`ratio` 0.9 / 0.75 / 0.5, the
same for all three compressing methods, query-agnostic: the question never scores the cache) on the offline
`longconvqa.sessions` task in multi-request mode, and prints the score per question type with each cost as a
ratio to `full`. Part 2 prefills histories of growing length (no questions) with `full`, SnapKV and EpiCache at
25% and prints each prefill's peak KV bytes: full's grows with the history, EpiCache's block-wise prefill stays
at its budget plus one block; SnapKV, which evicts each layer inside the forward right after the layer wrote it,
holds the whole context in one layer at a time. It also prints the most tokens one forward carries, which the
activation memory scales with (the whole history for a one-shot prefill, a block and the patch for EpiCache),
and the bytes of EpiCache's other episode caches, which the paper keeps off the accelerator. (Peak RSS on a CPU
does not show a prefill's allocations: the allocator reuses memory freed earlier. CUDA's max-allocated would.)
All rows go to one Parquet file, re-written after every run.

    .venv/bin/python benchmarks/longconvqa.py                      # the committed run (see docs/benchmarks.md)
    .venv/bin/python benchmarks/longconvqa.py --limit 1 --context-tokens 2048 --keeps 0.25 --lengths 1024 2048

The grid is also a sweep file, `benchmarks/sweeps/longconvqa.yaml`, which runs resumably (and on Ray) with
`cachebench sweep run benchmarks/sweeps/longconvqa.yaml --out results/sweeps/longconvqa`; `--from-parquet` reads that
folder too.
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

TASK = "longconvqa.sessions"
METHODS = ["epicache", "snapkv", "streamingllm"]
KEEPS = [0.1, 0.25, 0.5]
TYPES = ["single-session", "multi-session", "temporal", "knowledge-update", "abstention"]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context-tokens", type=int, default=7600, help="history length (the model has 8,192)")
    parser.add_argument("--limit", type=int, default=2, help="histories (episodes); each has 10 questions")
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--keeps", nargs="+", type=float, default=KEEPS, help="fractions of the history kept")
    parser.add_argument("--lengths", nargs="+", type=int, default=[1024, 2048, 4096, 7600],
                        help="history lengths for the prefill-memory part (empty: skip it)")
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks/longconvqa.parquet"))
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    parser.add_argument("--from-parquet", type=Path, help="print the accuracy table of an earlier run; run nothing")
    parser.add_argument("--memory-only", action="store_true", help="run only the prefill-memory part")
    return parser.parse_args(argv)


def mean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and v == v]
    return statistics.fmean(finite) if finite else float("nan")


def keep_of(row: dict[str, Any]) -> float:
    ratio = json.loads(row["method_params"]).get("ratio")
    return 1.0 if ratio is None else round(1.0 - ratio, 2)


def accuracy_table(rows: list[dict[str, Any]]) -> str:
    cells: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        cells[(row["method"], keep_of(row))].append(row)
    full = cells.get(("full", 1.0))
    head = ["method", "kept", *TYPES, "all", "n", "kv_bytes", "peak KV", "prefill", "TTFT"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (method, keep), group in sorted(cells.items(), key=lambda item: (item[0][0] != "full", item[0])):
        by_type = [mean([r["score"] for r in group if r["category"] == kind]) for kind in TYPES]

        def rel(column: str, group: list[dict[str, Any]] = group) -> str:
            if not full:
                return "-"
            return f"{mean([r[column] for r in group]) / mean([r[column] for r in full]):.2f}x"

        lines.append("| " + " | ".join([
            method, f"{keep:.0%}", *(f"{score:.3f}" for score in by_type),
            f"{mean([r['score'] for r in group]):.3f}", str(len(group)),
            rel("kv_bytes"), rel("peak_kv_bytes"), rel("prefill_ms"), rel("ttft_ms"),
        ]) + " |")
    return "\n".join(lines)


def run_accuracy(args: argparse.Namespace, model: Any, rows: list[dict[str, Any]]) -> None:
    import pyarrow.parquet as pq

    from cachebench.eval_run import EvalRequest, run_eval
    from cachebench.registry import build_method
    from cachebench.results import to_table

    scratch = Path(tempfile.gettempdir()) / "cachebench-longconvqa"  # run_eval's own files; the rows go to --out
    plan = [("full", ())] + [(name, (f"ratio={round(1 - keep, 2)}",)) for name in args.methods for keep in args.keeps]
    for name, params in plan:
        start = time.perf_counter()
        request = EvalRequest(method=name, task=TASK, params=params, model=args.model, device=args.device,
                              context_tokens=args.context_tokens, limit=args.limit, out=scratch)
        method = build_method(name, list(params))
        outcome = run_eval(request, model=model, method=method)
        rows.extend(outcome.rows)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(to_table(rows), args.out)
        extra = ""
        if name == "epicache" and method.sensitivity is not None:
            extra = f"; layer sensitivity {min(method.sensitivity):.4f}..{max(method.sensitivity):.4f}"
        print(f"{name} {' '.join(params)}: {len(outcome.rows)} rows, mean score "
              f"{mean([r['score'] for r in outcome.rows]):.3f}, {time.perf_counter() - start:.0f} s{extra}",
              file=sys.stderr, flush=True)


def run_memory(args: argparse.Namespace, model: Any) -> str:
    """Peak KV bytes of a context prefill alone (full, SnapKV and EpiCache at 25%), the most tokens one forward
    carries (what activation memory scales with) and what EpiCache keeps aside for its other episodes."""
    import torch

    from cachebench.engine.chat import ChatFormat
    from cachebench.engine.runner import RunSettings, prepare_episodes
    from cachebench.engine.session import KVSession, LayerHooks
    from cachebench.eval_run import EvalRequest, build_episodes
    from cachebench.models.anatomy import kv_bytes_per_token
    from cachebench.registry import build_method
    from cachebench.taskspec import resolve_tasks

    spec = resolve_tasks(TASK)[0]
    hooks = LayerHooks(model.model)
    methods = {"full": build_method("full", []), "snapkv": build_method("snapkv", ["ratio=0.75"]),
               "epicache": build_method("epicache", ["ratio=0.75"])}
    for method in methods.values():
        method.attach(model)
    epicache = methods["epicache"]
    config = model.config
    unit = kv_bytes_per_token(config, model.dtype, layers=1)  # one token in one layer
    mib = 2**20
    lines = ["| history tokens | full peak KV | snapkv 25% peak KV | epicache 25% peak KV | epicache bound "
             "(budget + block + patch) | tokens per forward: full, snapkv / epicache | epicache's other episodes "
             "(kept aside) |", "|---|---|---|---|---|---|---|"]
    for length in args.lengths:
        request = EvalRequest(method="full", task=TASK, context_tokens=length, limit=1)
        episode = prepare_episodes(build_episodes(spec, request, model), spec, model, ChatFormat(model.tokenizer),
                                   RunSettings("multi-request"))[0]
        peaks, aside = [], 0
        for name, method in methods.items():
            session = KVSession(model, method, hooks if method.uses_layer_hook else None)
            with torch.inference_mode():
                method.stage(session, episode.context_ids)
                session.prefill(episode.context_ids, "context")
            peaks.append(f"{session.peak_kv_bytes / mib:.1f} MiB")
            if name == "epicache":
                aside = sum(method.kv_bytes(cache) for cache in session.state["epicache"]["caches"][1:])
        tokens = len(episode.context_ids)
        bound = (epicache.params.kept(tokens) * config.num_hidden_layers + epicache.params.block
                 + epicache.params.patch_tokens) * unit
        per_forward = f"{tokens:,} / {min(tokens, epicache.params.block) + epicache.params.patch_tokens:,}"
        lines.append(f"| {tokens:,} | {' | '.join(peaks)} | {bound / mib:.1f} MiB | {per_forward} | "
                     f"{aside / mib:.1f} MiB |")
        print(lines[-1], file=sys.stderr, flush=True)
    hooks.remove()
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.from_parquet:
        import pyarrow.parquet as pq

        print(accuracy_table(pq.read_table(args.from_parquet).to_pylist()))
        return 0
    from cachebench.models.loading import load_model

    model = load_model(args.model, "auto", args.device, "sdpa")
    sections = []
    if not args.memory_only:
        rows: list[dict[str, Any]] = []
        run_accuracy(args, model, rows)
        sections = [f"Accuracy per question type (mean token F1; abstention: said not mentioned) at "
                    f"{args.context_tokens:,} history tokens, {args.limit} histories, costs relative to full:\n",
                    accuracy_table(rows)]
    if args.lengths:
        sections += ["\nPeak KV during the context prefill alone (the compressing methods keep 25%):\n",
                     run_memory(args, model)]
    text = "\n".join(sections)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
