"""How fast the command line answers: a mistyped method, `list methods` and `--help`, against importing torch.

Each command runs as a fresh process, as a user types it, `--repeats` times; the commands take turns (round
robin) so that a busy machine slows them all alike. Prints a Markdown table of the median and fastest wall time
of each and its ratio to `python -c "import torch"`, the floor every command paid when it loaded torch before
looking at its input.

    .venv/bin/python benchmarks/cli_latency.py
    .venv/bin/python benchmarks/cli_latency.py --repeats 11
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).parent / "cachebench"
CLI = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "cachebench.cli"]

# The same typo handed to cachebench.eval_run.run_eval, which checks it only after torch and transformers are
# imported: the path `eval` took before it checked names against the method manifest.
LIBRARY_TYPO = (
    "import sys\n"
    "from cachebench.errors import UsageError\n"
    "from cachebench.eval_run import EvalRequest, run_eval\n"
    "try:\n"
    "    run_eval(EvalRequest(method='snapkvv', task='multiturn'))\n"
    "except UsageError:\n"
    "    sys.exit(2)\n"
)

# label -> (command, the exit code it must end with)
COMMANDS: dict[str, tuple[list[str], int]] = {
    "cachebench eval --method snapkvv --task multiturn": ([*CLI, "eval", "--method", "snapkvv", "--task",
                                                          "multiturn"], 2),
    "run_eval(method='snapkvv') (torch first)": ([sys.executable, "-c", LIBRARY_TYPO], 2),
    "cachebench list methods": ([*CLI, "list", "methods"], 0),
    "cachebench --help": ([*CLI, "--help"], 0),
    'python -c "import torch"': ([sys.executable, "-c", "import torch"], 0),
}
REFERENCE = 'python -c "import torch"'


def run_once(command: list[str], expected: int) -> float:
    """Wall seconds of one run; a run ending with another exit code is a broken measurement, so it stops here."""
    env = {**os.environ, "COLUMNS": "80"}
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    elapsed = time.perf_counter() - started
    if result.returncode != expected:
        raise SystemExit(f"{' '.join(command)} exited {result.returncode}, expected {expected}: {result.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="runs of each command (default 7)")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    times: dict[str, list[float]] = {label: [] for label in COMMANDS}
    for command, expected in COMMANDS.values():  # one unmeasured run each: the file cache is warm for all
        run_once(command, expected)
    for _ in range(args.repeats):
        for label, (command, expected) in COMMANDS.items():
            times[label].append(run_once(command, expected))
    reference = statistics.median(times[REFERENCE])
    print(f"{args.repeats} runs each, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}\n")
    print("| command | median s | fastest s | median / import torch |")
    print("|---|---:|---:|---:|")
    for label, measured in times.items():
        median = statistics.median(measured)
        print(f"| `{label}` | {median:.2f} | {min(measured):.2f} | {median / reference:.2f} |")


if __name__ == "__main__":
    main()
