"""`cachebench suite list` and `cachebench suite run`: a sub-app that cli.py registers with `register(app)`.

Progress is one line per entry on stderr rather than a live bar, because suites mostly run in CI logs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cachebench.errors import UsageError
from cachebench.runs import Silent

if TYPE_CHECKING:
    from cachebench.suite import EntryResult, SuiteEntry


class _EntryLines(Silent):
    """One line when an entry starts and one when it ends; the per-turn callbacks stay quiet (from Silent)."""

    def entry_started(self, index: int, total: int, entry: SuiteEntry) -> None:
        print(f"[{index + 1}/{total}] {_label(entry)} ...", file=sys.stderr, flush=True)

    def entry_done(self, result: EntryResult) -> None:
        score = "-" if result.mean_score is None else f"{result.mean_score:.3f}"
        print(f"    {result.rows} rows, {result.errors} failed, mean score {score}, {result.seconds:.1f} s -> "
              f"{result.file}", file=sys.stderr, flush=True)


def _label(entry: SuiteEntry) -> str:
    params = " ".join(entry.assignments())
    return f"{entry.method} on {entry.task}" + (f" ({params})" if params else "")


def register(app: typer.Typer) -> None:
    """Add the `suite` command group to the main app."""
    suite_app = typer.Typer(help="Fixed grids of method x task runs (the CI suite, or your own YAML).",
                            no_args_is_help=True)
    app.add_typer(suite_app, name="suite")

    @suite_app.command("list")
    def list_command(
        file: Annotated[Path | None, typer.Option(help="Show this suite YAML instead of the shipped ones.")] = None,
    ) -> None:
        """Each suite with its entries and settings."""
        from cachebench.suite import load_suite, suite_names

        suites = [load_suite(file=file)] if file else [load_suite(name) for name in suite_names()]
        for suite in suites:
            print(f"{suite.name}: {suite.summary} (model {suite.model}, dtype {suite.dtype}, device {suite.device}, "
                  f"seed {suite.seed}; {suite.origin})")
            for index, entry in enumerate(suite.entries):
                settings = {k: v for k, v in entry.as_dict().items() if k not in ("method", "task", "params")}
                extra = ", ".join(f"{k}={v}" for k, v in settings.items())
                print(f"  {index:2d}  {_label(entry)}" + (f"  [{extra}]" if extra else ""))

    @suite_app.command("run")
    def run_command(
        name: Annotated[str | None, typer.Argument(help="A shipped suite (see `cachebench suite list`).")] = None,
        out: Annotated[Path | None, typer.Option(help="New or empty folder for one Parquet file per entry and "
                                                       "_suite.json.")] = None,
        file: Annotated[Path | None, typer.Option(help="Run the suite in this YAML file instead of a shipped "
                                                        "one.")] = None,
    ) -> None:
        """Check every entry, then run them all; exit 1 when some rows failed (their `error` column says why)."""
        from cachebench.suite import load_suite, run_suite

        if out is None:
            raise UsageError("--out DIR is required")
        suite = load_suite(name, file)
        outcome = run_suite(suite, out, _EntryLines())
        print(f"suite {suite.name}: {len(outcome.entries)} entries in {outcome.seconds:.0f} s; wrote "
              f"{sum(r.file is not None for r in outcome.entries)} files and {outcome.manifest}", file=sys.stderr)
        if outcome.errors:
            print(f"{outcome.errors} rows failed", file=sys.stderr)
            raise typer.Exit(1)
