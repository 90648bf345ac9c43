"""Per-category thresholds for `category-aware`, chosen on a held-out seed: each threshold is run as a
category-aware cache (one threshold for every category) on the generator's stream of seed 1 and, per category,
the threshold with the best F0.5 (precision weighted: a false hit costs more than a miss) is printed as a policy.
The benchmark scores seed 0, which this never sees. The fitting is cachebench.semantic.calibrate's, which
`cachebench calibrate` also runs.

    .venv/bin/python benchmarks/semantic_calibrate.py            # the thresholds behind category-aware's defaults
    .venv/bin/python benchmarks/semantic_calibrate.py --seed 2 --thresholds 0.8 0.85 0.9
"""

from __future__ import annotations

import argparse
import sys

THRESHOLDS = [0.70, 0.75, 0.78, 0.80, 0.82, 0.84, 0.86, 0.88, 0.90, 0.92, 0.94, 0.96]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="semantic.stream")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--thresholds", nargs="+", type=float, default=THRESHOLDS)
    args = parser.parse_args(argv)

    from cachebench.semantic.calibrate import calibrate

    result = calibrate(args.task, seed=args.seed, thresholds=args.thresholds)
    print(f"{result.task} ({result.mode}), seed {result.seed}: F0.5 / hit % / err % per threshold\n")
    print("| category | " + " | ".join(f"{t:.2f}" for t in result.thresholds) + " | best |")
    print("|---|" + "---|" * (len(result.thresholds) + 1))
    for category, fit in sorted(result.categories.items()):
        cells = [f"{r.f05:.3f} / {100 * r.hit_rate:.0f} / {100 * r.error_rate:.1f}"
                 for r in (fit.rates[t] for t in result.thresholds)]
        best = "—" if fit.threshold is None else f"{fit.threshold:.2f}"
        print(f"| {category} | " + " | ".join(cells) + f" | {best} |")
    for note in result.notes:
        print(f"\nnote: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
