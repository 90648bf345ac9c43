"""Quality versus budget for the KV-compression methods, each relative to `full` measured in the same sweep.

The sweep itself is data, `benchmarks/sweeps/kv_eviction.yaml` (every eviction method at each compression ratio on
the default multiturn task, in both SCBench modes and both compression settings, `full` beside them); this script
prints its tables from the results folder: per method and ratio the score, and each cost as a ratio to `full`
under the same mode and setting.

    .venv/bin/cachebench sweep run benchmarks/sweeps/kv_eviction.yaml --out results/sweeps/kv_eviction
    .venv/bin/python benchmarks/kv_eviction.py                                   # the tables of that folder
    .venv/bin/python benchmarks/kv_eviction.py --results runs/mine --markdown table.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results/sweeps/kv_eviction"),
                        help="a folder (or file) of the sweep's results")
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
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


def render(summary: dict[tuple, dict[str, float]], extras: dict[tuple, str]) -> str:
    return score_grid(summary) + "\n\n" + table(summary, extras)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    from cachebench.errors import UsageError
    from cachebench.resultdb import open_results

    try:
        connection, _, _ = open_results([args.results])
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # `items`: each (cell, episode, turn) once, however often a shard was resumed (cachebench.cells)
    table = connection.sql("SELECT * FROM items").to_arrow_table()
    rows = table.to_pylist()
    text = render(summarize(rows), {})
    first = rows[0]
    episodes = len({(r["method"], r["cell_params"], r["mode"], r["compression"], r["episode_id"]) for r in rows})
    cells = len({(r["method"], r["cell_params"], r["mode"], r["compression"]) for r in rows})
    print(f"model {first['model']} ({first['dtype']}) on {first['hardware']}; {cells} cells, {episodes} episodes, "
          f"{len(rows)} rows, task {first['task']}\n")
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
