"""Quality against the bytes the cache really holds, for every KV-compression family side by side.

Eviction, merging, quantization and key-channel pruning shrink the cache in different ways, so they are compared
on what they hold, not on their own knobs: each cell's `kv_bytes` (measured from the tensors the cache stores:
packed integers, scales, shared merged tensors, pruned keys) divided by `full`'s on the same episodes, mode and
setting, against its score. The sweep is data, `benchmarks/sweeps/kv_compression.yaml`; this script prints the
table (cells on the quality-versus-memory Pareto front marked) and writes one Pareto plot per mode as SVG.

    .venv/bin/cachebench sweep run benchmarks/sweeps/kv_compression.yaml --out results/sweeps/kv_compression
    .venv/bin/python benchmarks/kv_compression.py                      # table + docs/figures/kv_compression-*.svg
    .venv/bin/python benchmarks/kv_compression.py --results runs/mine --figures /tmp/figs --markdown table.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

FAMILIES = {
    "streamingllm": "eviction", "h2o": "eviction", "snapkv": "eviction", "pyramidkv": "eviction",
    "knorm": "eviction", "adakv": "eviction", "cake": "eviction", "windowkv": "eviction",
    "razorattention": "eviction", "kvmerger": "merging", "chelsea": "merging", "minicache": "merging (layers)",
    "kivi": "quantization", "quantized": "quantization", "think": "channels + eviction",
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results/sweeps/kv_compression"),
                        help="a folder (or file) of the sweep's results")
    parser.add_argument("--figures", type=Path, default=Path("docs/figures"),
                        help="where the Pareto plots (kv_compression-<mode>.svg) are written")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    return parser.parse_args(argv)


def mean(values: list[float]) -> float:
    finite = [v for v in values if v == v]
    return statistics.fmean(finite) if finite else float("nan")


def label(row: dict[str, Any]) -> str:
    """The parameters a cell changed from the method's defaults (all of them for a method this version lacks)."""
    from cachebench.method_manifest import effective_defaults

    params = json.loads(row["cell_params"]) if row.get("cell_params") else {}
    try:
        defaults = effective_defaults(row["method"])
    except Exception:  # a method this version does not know: show everything
        defaults = {}
    return " ".join(f"{k}={v}" for k, v in sorted(params.items()) if defaults.get(k, object()) != v) or "-"


def summarize(rows: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    """Mean score and costs per (mode, method, parameters)."""
    cells: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        cells[(row["mode"], row["method"], label(row))].append(row)
    return {key: {"score": mean([r["score"] for r in group]), "kv_bytes": mean([r["kv_bytes"] for r in group]),
                  "prefill_ms": mean([r["prefill_ms"] for r in group]),
                  "decode_ms": mean([r["decode_ms_per_token"] for r in group]),
                  "errors": sum(1 for r in group if r.get("error")), "n": len(group)}
            for key, group in cells.items()}


def pareto(points: list[tuple[float, float]]) -> list[bool]:
    from cachebench.leaderboard.kv import pareto_front

    return pareto_front(points)


def table(summary: dict[tuple, dict[str, Any]]) -> str:
    lines = ["| mode | family | method | parameters | kv_bytes ÷ full | score | full's score | prefill ÷ full | "
             "decode/token ÷ full | n | Pareto |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for mode in sorted({key[0] for key in summary}):
        base = next((cell for key, cell in summary.items() if key[0] == mode and key[1] == "full"), None)
        if base is None:
            continue
        members = [(key, cell) for key, cell in summary.items() if key[0] == mode and key[1] != "full"]
        front = pareto([(cell["kv_bytes"] / base["kv_bytes"], cell["score"]) for _, cell in members])
        ordered = sorted(zip(members, front, strict=True), key=lambda m: -m[0][1]["kv_bytes"])
        for ((_, method, params), cell), on_front in ordered:
            lines.append(
                f"| {mode} | {FAMILIES.get(method, 'other')} | {method} | {params} | "
                f"{cell['kv_bytes'] / base['kv_bytes']:.3f} | {cell['score']:.3f} | {base['score']:.3f} | "
                f"{cell['prefill_ms'] / base['prefill_ms']:.2f} | {cell['decode_ms'] / base['decode_ms']:.2f} | "
                f"{cell['n']}{' (' + str(cell['errors']) + ' errors)' if cell['errors'] else ''} | "
                f"{'yes' if on_front else ''} |")
    return "\n".join(lines)


def figures(summary: dict[tuple, dict[str, Any]], folder: Path) -> list[Path]:
    """One SVG per mode: each method's points joined along its knob, the Pareto front dashed."""
    from cachebench.leaderboard.plots import Point, Series, scatter, style_for

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    methods = sorted({key[1] for key in summary})
    for mode in sorted({key[0] for key in summary}):
        base = next((cell for key, cell in summary.items() if key[0] == mode and key[1] == "full"), None)
        if base is None:
            continue
        series = {m: Series(m, style_for(i)) for i, m in enumerate(methods)}
        points = []
        for (cell_mode, method, params), cell in summary.items():
            if cell_mode != mode:
                continue
            x = cell["kv_bytes"] / base["kv_bytes"]
            tooltip = f"{method} {params}: {cell['score']:.3f}, ×full {x:.3f}"
            series[method].points.append(Point(x, cell["score"], tooltip))
            points.append((x, cell["score"]))
        front = [p for p, on in zip(points, pareto(points), strict=True) if on]
        svg = scatter("Quality vs KV bytes held", f"multiturn · {mode} · query-agnostic", "KV-cache bytes ÷ full's",
                      "mean score", [s for s in series.values() if s.points], front)
        path = folder / f"kv_compression-{mode}.svg"
        path.write_text(str(svg) + "\n", encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    from cachebench.errors import UsageError
    from cachebench.resultdb import open_results

    try:
        connection, _, _ = open_results([args.results])
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = connection.sql("SELECT * FROM items").to_arrow_table().to_pylist()  # each item once (cachebench.cells)
    summary = summarize(rows)
    text = table(summary)
    first = rows[0]
    print(f"model {first['model']} ({first['dtype']}) on {first['hardware']}; {len(summary)} cells, {len(rows)} rows, "
          f"task {first['task']}\n")
    print(text)
    for path in figures(summary, args.figures):
        print(f"wrote {path}")
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
