"""Per-category thresholds for `category-aware`, chosen on a held-out seed: the fixed-threshold cache is swept on
the generator's stream of seed 1 and, per category, the threshold with the best F0.5 (precision weighted: a false
hit costs more than a miss) is printed as a policy. The benchmark scores seed 0, which this never sees.

    .venv/bin/python benchmarks/semantic_calibrate.py            # the thresholds behind category-aware's defaults
    .venv/bin/python benchmarks/semantic_calibrate.py --seed 2 --thresholds 0.8 0.85 0.9
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

THRESHOLDS = [0.70, 0.75, 0.78, 0.80, 0.82, 0.84, 0.86, 0.88, 0.90, 0.92, 0.94, 0.96]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="semantic.stream")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--thresholds", nargs="+", type=float, default=THRESHOLDS)
    args = parser.parse_args(argv)

    from cachebench.registry import build_method
    from cachebench.runs import EvalRequest
    from cachebench.semantic.embedder import load_embedder
    from cachebench.semantic.evaluate import run_semantic_eval
    from cachebench.semantic.scoring import rates
    from cachebench.taskspec import resolve_tasks

    specs = resolve_tasks(args.task)
    embedder = load_embedder()
    embedder.remember = True
    scores: dict[str, dict[float, tuple[float, float, float]]] = defaultdict(dict)
    with tempfile.TemporaryDirectory() as scratch:
        for threshold in args.thresholds:
            request = EvalRequest(method="threshold", task=args.task, seed=args.seed, out=Path(scratch),
                                  llm_cost="1")
            method = build_method("threshold", ["store=memory", f"threshold={threshold}"])
            rows = run_semantic_eval(request, specs, method, embedder=embedder).rows
            by_category = defaultdict(list)
            for row in rows:
                if not row["warmup"] and row["outcome"]:
                    by_category[row["category"]].append(row)
            for category, members in by_category.items():
                r = rates([m["outcome"] for m in members], [bool(m["stale"]) for m in members])
                scores[category][threshold] = (r.f05, r.hit_rate, r.error_rate)
    print(f"{args.task}, seed {args.seed}: F0.5 / hit % / err % per threshold\n")
    print("| category | " + " | ".join(f"{t:.2f}" for t in args.thresholds) + " | best |")
    print("|---|" + "---|" * (len(args.thresholds) + 1))
    for category in sorted(scores):
        best = max(scores[category], key=lambda t: scores[category][t][0])
        cells = [f"{f:.3f} / {100 * h:.0f} / {100 * e:.1f}" for f, h, e in scores[category].values()]
        print(f"| {category} | " + " | ".join(cells) + f" | {best:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
