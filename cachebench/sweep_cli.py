"""`cachebench sweep run|plan|status` and `cachebench suite list|run` (a suite is a shipped sweep file with a
name): sub-apps that cli.py registers with `register(app)`. Heavy modules load inside the commands."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cachebench.errors import UsageError

if TYPE_CHECKING:
    from cachebench.sweep.grid import Sweep
    from cachebench.sweep.run import SweepOutcome
    from cachebench.sweep.state import ShardState


EXECUTOR_HELP = "local (one cell after another in this process) or ray (a worker per device on a Ray cluster)."


def _states_by_cell(states: list[ShardState]) -> dict[int, Counter[str]]:
    by_cell: dict[int, Counter[str]] = {}
    for state in states:
        by_cell.setdefault(state.shard.cell_index, Counter())[state.state] += 1
    return by_cell


def _cell_table(sweep: Sweep, states: list[ShardState]) -> None:
    by_cell = _states_by_cell(states)
    messages = {state.shard.cell_index: state.message for state in states if state.message}
    for index, cell in enumerate(sweep.cells):
        counts = by_cell.get(index, Counter())
        summary = ", ".join(f"{counts[name]} {name}" for name in ("done", "partial", "failed", "pending")
                            if counts[name])
        line = f"{index:4d}  {cell.label()}  [{cell.shards} shard{'s' if cell.shards > 1 else ''}: {summary}]"
        print(line + (f"  -- {messages[index]}" if index in messages else ""))


def _totals(states: list[ShardState]) -> str:
    counts = Counter(state.state for state in states)
    return ", ".join(f"{counts[name]} {name}" for name in ("done", "partial", "failed", "pending"))


def _report(outcome: SweepOutcome) -> None:
    ran = len(outcome.results)
    print(f"sweep {outcome.sweep.name}: {len(outcome.states)} shards ({_totals(outcome.states)}); ran {ran}, kept "
          f"{outcome.kept} already done; {outcome.seconds:.0f} s on {outcome.workers} worker"
          f"{'s' if outcome.workers != 1 else ''}"
          + (f" (Ray start-up {outcome.startup_seconds:.1f} s)" if outcome.startup_seconds else "")
          + f"; results in {outcome.out}", file=sys.stderr)
    if outcome.failed:
        print(f"{len(outcome.failed)} shard(s) did not finish:", file=sys.stderr)
        for state in outcome.failed[:20]:
            reason = f": {state.message}" if state.message else ""
            print(f"  {state.state} {state.shard.label()}{reason}", file=sys.stderr)


def _run(sweep: Sweep, out: Path, executor: str, address: str | None, workers: int | None, quiet: bool) -> None:
    from cachebench.sweep.progress import SweepView
    from cachebench.sweep.run import run_sweep

    view = SweepView(live=False if quiet else None)
    outcome = run_sweep(sweep, out, executor, view, address, workers)
    _report(outcome)
    if outcome.failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the `sweep` and `suite` command groups to the main app."""
    sweep_app = typer.Typer(help="Grids of method x parameter x task x model x setting cells, resumable, on this "
                                 "machine or a Ray cluster.", no_args_is_help=True)
    suite_app = typer.Typer(help="The shipped sweeps (the CI suite): list them, run one.", no_args_is_help=True)
    app.add_typer(sweep_app, name="sweep")
    app.add_typer(suite_app, name="suite")

    @sweep_app.command("run")
    def run_command(
        file: Annotated[Path, typer.Argument(help="The sweep YAML file (docs/sweeps.md).")],
        out: Annotated[Path | None, typer.Option(help="Folder for the sweep's files; running again into the same "
                                                       "folder skips finished shards.")] = None,
        executor: Annotated[str, typer.Option(help=EXECUTOR_HELP)] = "local",
        address: Annotated[str | None, typer.Option(help="Ray: the cluster (auto, HOST:PORT or ray://HOST:PORT); "
                                                          "default: start a local Ray instance.")] = None,
        workers: Annotated[int | None, typer.Option(help="Ray: how many workers (default: one per GPU, or one per "
                                                          "node without GPUs).")] = None,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="One line per shard, no live view.")] = False,
    ) -> None:
        """Check every cell, then run every shard not yet done; exit 1 when some shard failed."""
        from cachebench.sweep.grid import load_sweep

        if out is None:
            raise UsageError("--out DIR is required")
        _run(load_sweep(file=file), out, executor, address, workers, quiet)

    @sweep_app.command("plan")
    def plan_command(
        file: Annotated[Path, typer.Argument(help="The sweep YAML file.")],
        out: Annotated[Path | None, typer.Option(help="Also say which shards are already done there.")] = None,
    ) -> None:
        """Every cell the file expands to, checked as `eval` checks its input; runs nothing."""
        from cachebench.sweep.grid import load_sweep
        from cachebench.sweep.run import plan

        sweep = load_sweep(file=file)
        states, todo = plan(sweep, out)
        _cell_table(sweep, states)
        merged = f" ({sweep.merged} written twice, run once)" if sweep.merged else ""
        where = f"; in {out}: {_totals(states)}" if out is not None else ""
        print(f"{len(sweep.cells)} cells{merged}, {len(states)} shards{where}; {len(todo)} to run")

    @sweep_app.command("status")
    def status_command(
        out: Annotated[Path, typer.Argument(help="A sweep's --out folder.")],
    ) -> None:
        """Done / partial / failed / pending shards of each cell, from the folder's files."""
        from cachebench.sweep.state import sweep_from_manifest, sweep_states

        sweep = sweep_from_manifest(out)
        states = sweep_states(sweep, out)
        _cell_table(sweep, states)
        print(f"sweep {sweep.name}: {len(sweep.cells)} cells, {len(states)} shards: {_totals(states)}")

    @suite_app.command("list")
    def list_command() -> None:
        """Each shipped suite with its cells."""
        from cachebench.sweep.grid import load_sweep, shipped_names

        for name in shipped_names():
            sweep = load_sweep(name)
            print(f"{sweep.name}: {sweep.summary} ({len(sweep.cells)} cells; {sweep.origin})")
            for index, cell in enumerate(sweep.cells):
                print(f"  {index:2d}  {cell.label()}")

    @suite_app.command("run")
    def suite_run_command(
        name: Annotated[str, typer.Argument(help="A shipped suite (see `cachebench suite list`).")],
        out: Annotated[Path | None, typer.Option(help="Folder for the suite's files.")] = None,
        executor: Annotated[str, typer.Option(help=EXECUTOR_HELP)] = "local",
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="One line per shard, no live view.")] = False,
    ) -> None:
        """Run a shipped suite: `cachebench sweep run` of its file."""
        from cachebench.sweep.grid import load_sweep

        if out is None:
            raise UsageError("--out DIR is required")
        _run(load_sweep(name), out, executor, None, None, quiet)
