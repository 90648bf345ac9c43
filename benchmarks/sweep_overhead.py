"""The Ray executor's cost over the local executor: the same small grid run both ways, side by side, in one run.

Each round runs the grid with `--executor local` (shards one after another in this process) and with
`--executor ray` (a local Ray instance, one worker holding the model), each into a fresh folder, and prints the
wall time of each, Ray's start-up (starting the instance and its worker) apart, and the ratio of the work times.
It also checks that both executors wrote the same predictions and scores, item for item.

    .venv/bin/python benchmarks/sweep_overhead.py                 # 3 methods x 2 ratios on multiturn, 2 episodes each
    .venv/bin/python benchmarks/sweep_overhead.py --rounds 2 --limit 4
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import textwrap
from pathlib import Path

GRID = """
name: overhead
dtype: float32
device: cpu
limit: {limit}
context_tokens: 256
grid:
  - task: multiturn
    methods: {{streamingllm: {{ratio: [0.25, 0.5]}}, snapkv: {{ratio: [0.25, 0.5]}}, pyramidkv: {{ratio: [0.25, 0.5]}}}}
"""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=2, help="episodes per cell")
    parser.add_argument("--rounds", type=int, default=1, help="local and Ray runs each (medians are reported)")
    parser.add_argument("--workers", type=int, default=1, help="Ray workers (each gets its share of the CPUs)")
    return parser.parse_args(argv)


def _items(out: Path) -> dict[tuple, tuple]:
    from cachebench.results import read_results

    return {(r["method"], r["cell_params"], r["episode_id"], r["turn"]): (r["prediction"], r["score"])
            for r in read_results([out]).to_pylist()}


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    from cachebench.provenance import hardware
    from cachebench.sweep.grid import parse_sweep
    from cachebench.sweep.progress import SweepView
    from cachebench.sweep.run import run_sweep

    sweep = parse_sweep(textwrap.dedent(GRID.format(limit=args.limit)), "sweep_overhead.py", "overhead")
    local, ray, startup = [], [], []
    same = True
    with tempfile.TemporaryDirectory() as scratch:
        for round_index in range(args.rounds):
            outs = {}
            for executor in ("local", "ray"):
                out = Path(scratch) / f"{executor}-{round_index}"
                outcome = run_sweep(sweep, out, executor, SweepView(live=False),
                                    workers=args.workers if executor == "ray" else None)
                if outcome.failed:
                    print(f"error: {len(outcome.failed)} shards failed under {executor}", file=sys.stderr)
                    return 1
                work = outcome.seconds - outcome.startup_seconds
                (local if executor == "local" else ray).append(work)
                if executor == "ray":
                    startup.append(outcome.startup_seconds)
                outs[executor] = out
            same = same and _items(outs["local"]) == _items(outs["ray"])
    import torch

    cells = len(sweep.cells)
    print(f"\n{cells} cells x {args.limit} episodes, {args.rounds} round(s), Ray workers: {args.workers}; "
          f"{hardware(torch.device('cpu'))}\n")
    print("| executor | wall s (work) | vs local | start-up s (apart) |")
    print("|---|---|---|---|")
    base = statistics.median(local)
    print(f"| local | {base:.1f} | 1.00x | - |")
    print(f"| ray | {statistics.median(ray):.1f} | {statistics.median(ray) / base:.2f}x | "
          f"{statistics.median(startup):.1f} |")
    print(f"\nsame predictions and scores, item for item: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
