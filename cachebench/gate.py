"""`cachebench gate`: does a candidate run regress against a baseline run?

Both sides are result files. Rows are grouped into cells (cachebench.cells.IDENTITY, each item once, as `show` and
the leaderboard read them) and paired item by item, so the comparison is about the change, not about which items
happened to run. A cell fails when the score drop is larger than the tolerance with the chosen confidence (paired
bootstrap, resampling whole episodes because the turns of one episode are correlated), or when a requested cost
check is exceeded: a noisy difference on a few items never blocks a pull request.

A check that cannot be made is a failed check, never a silent pass: a cell also fails when baseline items are
missing from the candidate (beyond `--max-missing`), when too few items are matched to compute an interval, when a
matched score is NaN or infinite, and when the candidate is a partial run (a checkpoint of a killed run).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cachebench.cells import IDENTITY
from cachebench.errors import UsageError
from cachebench.resultdb import ITEMS, open_results, partial_runs
from cachebench.results import PartialRun
from cachebench.stats import cluster_bootstrap_ci

CELL_KEY = IDENTITY  # track first
_FAILING_FIRST = {"missing": 0, "incomparable": 1, "regressed": 2, "improved": 3, "new": 4, "unchanged": 5}


@dataclass(frozen=True)
class GateOptions:
    """What counts as a regression; every field is a `cachebench gate` option of the same name."""

    tolerance: float = 0.02  # absolute score drop that is tolerated
    confidence: float = 0.95  # of the two-sided bootstrap interval of (candidate - baseline)
    max_ttft_ratio: float | None = None  # candidate / baseline mean request TTFT; None: not checked
    max_kv_ratio: float | None = None  # candidate / baseline mean kv_bytes; None: not checked
    allow_missing: bool = False  # baseline cells and items absent from the candidate pass (any max_missing)
    max_missing: float = 0.0  # fraction of a cell's baseline items that may be absent from the candidate
    allow_new_errors: bool = False  # rows failing only in the candidate pass
    allow_partial: bool = False  # cells of a partial candidate run (run_complete false) are judged, not failed
    resamples: int = 2000
    seed: int = 0

    def check(self) -> None:
        """Refuse options that make the verdict meaningless, naming the CLI option."""
        if not (math.isfinite(self.tolerance) and self.tolerance >= 0):
            raise UsageError(f"--tolerance must be a number >= 0, got {self.tolerance}")
        if not 0 < self.confidence < 1:
            raise UsageError(f"--confidence must be between 0 and 1 (exclusive), got {self.confidence}")
        for name, ratio in (("--max-ttft-ratio", self.max_ttft_ratio), ("--max-kv-ratio", self.max_kv_ratio)):
            if ratio is not None and not (math.isfinite(ratio) and ratio > 0):
                raise UsageError(f"{name} must be a number > 0, got {ratio}")
        if not 0 <= self.max_missing <= 1:  # false for NaN too
            raise UsageError(f"--max-missing must be a fraction between 0 and 1, got {self.max_missing}")
        if self.resamples < 100:
            raise UsageError(f"--resamples must be at least 100, got {self.resamples}")


@dataclass
class CellResult:
    """The verdict on one cell. Scores, difference and interval are over the matched items with finite scores."""

    key: dict[str, str | None]
    status: str  # regressed | improved | unchanged | missing (baseline only) | new (candidate only) | incomparable
    failed: bool
    reasons: list[str] = field(default_factory=list)
    matched: int = 0  # items scored without error on both sides
    clusters: int = 0  # resampling units among those with finite scores: episodes (KV) or requests (semantic)
    baseline_items: int = 0  # items of this cell in the baseline (semantic warm-up requests left out)
    baseline_only: int = 0  # items of this cell present only in the baseline: missing from the candidate
    candidate_only: int = 0
    baseline_errors: int = 0  # items present on both sides that failed in the baseline
    candidate_errors: int = 0
    new_errors: int = 0  # items that succeeded in the baseline and failed in the candidate
    baseline_nonfinite: int = 0  # matched items whose baseline score is NaN or infinite
    candidate_nonfinite: int = 0
    baseline_score: float = math.nan
    candidate_score: float = math.nan
    difference: float = math.nan  # candidate - baseline
    low: float = math.nan
    high: float = math.nan
    ttft_ratio: float = math.nan
    kv_ratio: float = math.nan
    baseline_partial: list[PartialRun] = field(default_factory=list)  # partial runs with rows in this cell
    candidate_partial: list[PartialRun] = field(default_factory=list)


@dataclass
class GateResult:
    passed: bool
    cells: list[CellResult]
    options: GateOptions
    baseline: list[str]
    candidate: list[str]
    baseline_partial: list[PartialRun] = field(default_factory=list)
    candidate_partial: list[PartialRun] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(cell.status == status for cell in self.cells)

    @property
    def failed_cells(self) -> list[CellResult]:
        return [cell for cell in self.cells if cell.failed]


@dataclass
class _Item:
    score: float | None  # None when the item failed; NaN for a perf item (timings, no score)
    ttft: float
    kv: float


# --- loading -----------------------------------------------------------------------------------------------------


@dataclass
class _Side:
    """One side of the comparison, as read from its result files."""

    cells: dict[tuple, dict[tuple, _Item]]  # cell key (its track first) -> item key -> item
    partial: list[PartialRun]  # runs whose rows say they did not finish (run_complete false)
    partial_cells: dict[tuple, set[str]]  # cell key -> ids of the partial runs with rows in it

    def partial_in(self, cell: tuple) -> list[PartialRun]:
        return [run for run in self.partial if run.run_id in self.partial_cells.get(cell, ())]


def _load(paths: Sequence[Path], side: str) -> _Side:
    """Read one side: each item once (cachebench.cells: the newest run's row where runs repeat an item, as `show`
    and the leaderboard read it). Semantic warm-up rows are left out of the items, as `show` leaves them out of
    scores; the runs that did not finish are listed with the rows they have and the cells they have rows in."""
    try:
        connection, _, rows = open_results(paths)
    except UsageError as exc:
        raise UsageError(f"--{side}: {exc}") from None
    try:
        if rows == 0:
            raise UsageError(f"--{side}: no result rows in {', '.join(map(str, paths))}")
        names = ", ".join(CELL_KEY)
        found = connection.execute(f"""
            SELECT {names}, seed, episode_id, turn, score, error, request_ttft_ms, kv_bytes, run_id, run_complete
            FROM {ITEMS} WHERE NOT (track = 'semantic' AND coalesce(warmup, false))""").fetchall()
        partial = partial_runs(connection)
    finally:
        connection.close()
    width = len(CELL_KEY)
    cells: dict[tuple, dict[tuple, _Item]] = defaultdict(dict)
    partial_cells: dict[tuple, set[str]] = defaultdict(set)
    for row in found:
        cell = row[:width]
        seed, episode, turn, score, error, ttft, kv, run_id, complete = row[width:]
        if complete is False:  # null (files before schema 6): unknown, read as complete
            partial_cells[cell].add(run_id)
        ok = error is None and (score is not None or cell[0] == "perf")
        # the seed is part of the item: generated tasks (and semantic request ids) reuse ids across seeds
        cells[cell][(seed, episode, turn)] = _Item(
            (math.nan if score is None else float(score)) if ok else None, _float(ttft), _float(kv))
    return _Side(dict(cells), partial, dict(partial_cells))


def _float(value: float | None) -> float:
    return math.nan if value is None else float(value)


# --- statistics --------------------------------------------------------------------------------------------------


# the paired difference's interval is the one every reader uses: whole clusters resampled, NaN bounds under two
paired_bootstrap = cluster_bootstrap_ci


def _ratio(candidate: list[float], baseline: list[float]) -> float:
    """Mean candidate / mean baseline over the items where both are measured; NaN when nothing is."""
    pairs = [(c, b) for c, b in zip(candidate, baseline, strict=True) if math.isfinite(c) and math.isfinite(b)]
    if not pairs:
        return math.nan
    base = float(np.mean([b for _, b in pairs]))
    return float(np.mean([c for c, _ in pairs])) / base if base > 0 else math.nan


# --- judging -----------------------------------------------------------------------------------------------------


def _judge(key: tuple, base: dict[tuple, _Item], cand: dict[tuple, _Item], track: str, options: GateOptions,
           baseline_partial: list[PartialRun], candidate_partial: list[PartialRun]) -> CellResult:
    """The verdict on a cell both sides hold. Every check that cannot be made fails the cell with its reason."""
    cell = CellResult(key=dict(zip(CELL_KEY, key, strict=True)), status="unchanged", failed=False,
                      baseline_partial=baseline_partial, candidate_partial=candidate_partial)
    matched = _pair(cell, base, cand)
    if track == "perf":  # timings only: judged by the cost checks alone, and there must be one
        judged = _perf(cell, options)
    else:
        judged = _compare(cell, base, cand, matched, track == "semantic", options)
    cell.reasons = [*_partial_reasons(cell, options), *_missing_reasons(cell, options), *judged,
                    *_cost_reasons(cell, base, cand, matched, options)]
    if cell.new_errors and not options.allow_new_errors:
        cell.reasons.append(f"{cell.new_errors} item(s) fail only in the candidate")
    cell.failed = bool(cell.reasons)
    return cell


def _pair(cell: CellResult, base: dict[tuple, _Item], cand: dict[tuple, _Item]) -> list[tuple]:
    """Count what each side holds and return the items scored without error on both, in a stable order (the
    bootstrap's clusters are numbered in this order, so the interval does not depend on the file order)."""
    common = sorted(set(base) & set(cand), key=lambda item: tuple(map(str, item)))
    cell.baseline_items = len(base)
    cell.baseline_only = len(set(base) - set(cand))
    cell.candidate_only = len(set(cand) - set(base))
    cell.baseline_errors = sum(base[i].score is None for i in common)
    cell.candidate_errors = sum(cand[i].score is None for i in common)
    cell.new_errors = sum(base[i].score is not None and cand[i].score is None for i in common)
    matched = [i for i in common if base[i].score is not None and cand[i].score is not None]
    cell.matched = len(matched)
    return matched


def _compare(cell: CellResult, base: dict[tuple, _Item], cand: dict[tuple, _Item], matched: list[tuple],
             semantic: bool, options: GateOptions) -> list[str]:
    """Scores, paired difference and its interval over the matched items whose scores are finite on both sides; the
    status; and the reasons to fail: a regression, or a cell that cannot be judged (non-finite scores, fewer than
    two clusters, no interval), which would otherwise pass for want of evidence."""
    cell.baseline_nonfinite = sum(not math.isfinite(base[i].score) for i in matched)
    cell.candidate_nonfinite = sum(not math.isfinite(cand[i].score) for i in matched)
    reasons = [f"{count} matched item(s) scored NaN or infinite in the {side}"
               for side, count in (("baseline", cell.baseline_nonfinite), ("candidate", cell.candidate_nonfinite))
               if count]
    finite = [i for i in matched if math.isfinite(base[i].score) and math.isfinite(cand[i].score)]
    clusters = [item if semantic else item[:2] for item in finite]  # (seed, episode_id) or the item itself
    cell.clusters = len(set(clusters))
    if not finite:
        cell.status = "incomparable"
        what = "no item scored without error" if not matched else "no matched item with finite scores"
        return [*reasons, f"cannot judge: {what} on both sides"]
    baseline_scores = [base[i].score for i in finite]
    candidate_scores = [cand[i].score for i in finite]
    cell.baseline_score = float(np.mean(baseline_scores))
    cell.candidate_score = float(np.mean(candidate_scores))
    differences = np.asarray(candidate_scores, dtype=float) - np.asarray(baseline_scores, dtype=float)
    cell.difference, cell.low, cell.high = paired_bootstrap(differences, clusters, options.resamples,
                                                            options.confidence, options.seed)
    unit = "request" if semantic else "episode"
    if cell.clusters < 2:
        cell.status = "incomparable"
        reasons.append(f"cannot judge: {cell.clusters} cluster ({unit}) matched, need at least 2")
    elif not (math.isfinite(cell.low) and math.isfinite(cell.high)):
        cell.status = "incomparable"
        reasons.append("cannot judge: the bootstrap interval of the difference is undefined")
    elif cell.high < -options.tolerance:
        cell.status = "regressed"
        reasons.append(f"score dropped by more than {options.tolerance:g} at {options.confidence:.0%}")
    elif cell.low > options.tolerance:
        cell.status = "improved"
    return reasons


def _perf(cell: CellResult, options: GateOptions) -> list[str]:
    """A perf cell has no score: without a cost check nothing about it is judged, which fails it."""
    cell.clusters = cell.matched
    if options.max_ttft_ratio is None and options.max_kv_ratio is None:
        cell.status = "incomparable"
        return ["cannot judge a perf cell (timings, no score) without --max-ttft-ratio or --max-kv-ratio"]
    if not cell.matched:
        cell.status = "incomparable"
        return ["cannot judge: no perf measurement matched on both sides"]
    return []


def _describe(run: PartialRun, side: str) -> str:
    return f"{side} run {run.run_id} is partial: {run.rows} of {run.planned} rows"


def _partial_reasons(cell: CellResult, options: GateOptions) -> list[str]:
    """A partial candidate run is refused: its missing rows may be exactly the ones that would have regressed."""
    if options.allow_partial:
        return []
    return [_describe(run, "candidate") for run in cell.candidate_partial]


def _missing_reasons(cell: CellResult, options: GateOptions) -> list[str]:
    """Baseline items the candidate lacks: a candidate that dropped most of a cell must not pass on what is left."""
    if options.allow_missing or not cell.baseline_items:
        return []
    if cell.baseline_only / cell.baseline_items <= options.max_missing:
        return []
    return [f"{cell.baseline_only} of {cell.baseline_items} baseline items not in the candidate (more than "
            f"--max-missing {options.max_missing:g})"]


def _cost_reasons(cell: CellResult, base: dict[tuple, _Item], cand: dict[tuple, _Item], matched: list[tuple],
                  options: GateOptions) -> list[str]:
    """The requested cost checks over the matched items. A cell where neither side measured the cost (semantic
    caches have no TTFT or KV bytes) has a NaN ratio and is not checked."""
    cell.ttft_ratio = _ratio([cand[i].ttft for i in matched], [base[i].ttft for i in matched])
    cell.kv_ratio = _ratio([cand[i].kv for i in matched], [base[i].kv for i in matched])
    reasons = []
    if options.max_ttft_ratio is not None and cell.ttft_ratio > options.max_ttft_ratio:
        reasons.append(f"TTFT ×{cell.ttft_ratio:.2f} > {options.max_ttft_ratio:g}")
    if options.max_kv_ratio is not None and cell.kv_ratio > options.max_kv_ratio:
        reasons.append(f"KV bytes ×{cell.kv_ratio:.2f} > {options.max_kv_ratio:g}")
    return reasons


def _one_sided(key: tuple, status: str, items: int, options: GateOptions, baseline_partial: list[PartialRun],
               candidate_partial: list[PartialRun]) -> CellResult:
    """A cell only one side holds: `missing` (baseline only) fails unless --allow-missing; `new` (candidate only)
    passes, unless it holds rows of a partial candidate run."""
    cell = CellResult(key=dict(zip(CELL_KEY, key, strict=True)), status=status, failed=False,
                      baseline_partial=baseline_partial, candidate_partial=candidate_partial)
    if status == "missing":
        cell.baseline_items = cell.baseline_only = items
        if not options.allow_missing:
            cell.reasons.append("not in the candidate")
    else:
        cell.candidate_only = items
    cell.reasons[:0] = _partial_reasons(cell, options)
    cell.failed = bool(cell.reasons)
    return cell


def run_gate(baseline: Sequence[Path], candidate: Sequence[Path], options: GateOptions | None = None) -> GateResult:
    """Compare every cell the two sides hold; raises UsageError when there is nothing usable to compare."""
    options = options or GateOptions()
    options.check()
    base, cand = _load(baseline, "baseline"), _load(candidate, "candidate")
    common = set(base.cells) & set(cand.cells)
    if not common:
        raise UsageError(f"baseline ({len(base.cells)} cells) and candidate ({len(cand.cells)} cells) share no cell "
                         f"({', '.join(CELL_KEY)})")
    cells = [_judge(key, base.cells[key], cand.cells[key], key[0], options, base.partial_in(key),
                    cand.partial_in(key)) for key in common]
    if all(cell.matched + cell.baseline_errors + cell.candidate_errors == 0 for cell in cells):
        raise UsageError("the common cells share no item (seed, episode_id, turn); were both runs made with the "
                         "same seed and tasks?")
    cells += [_one_sided(key, "missing", len(base.cells[key]), options, base.partial_in(key), [])
              for key in set(base.cells) - common]
    cells += [_one_sided(key, "new", len(cand.cells[key]), options, [], cand.partial_in(key))
              for key in set(cand.cells) - common]
    cells.sort(key=lambda c: (not c.failed, _FAILING_FIRST[c.status], tuple(str(v or "") for v in c.key.values())))
    return GateResult(passed=not any(cell.failed for cell in cells), cells=cells, options=options,
                      baseline=[str(p) for p in baseline], candidate=[str(p) for p in candidate],
                      baseline_partial=base.partial, candidate_partial=cand.partial)


# --- reporting ---------------------------------------------------------------------------------------------------


def _summary(result: GateResult) -> str:
    options = result.options
    verdict = "PASS" if result.passed else "FAIL"
    counts = ", ".join(f"{result.count(s)} {s}" for s in ("regressed", "improved", "unchanged", "missing", "new",
                                                           "incomparable") if result.count(s) or s == "regressed")
    return (f"**{verdict}**: {len(result.failed_cells)} of {len(result.cells)} cells failing ({counts}); "
            f"tolerance {options.tolerance:g} at {options.confidence:.0%} confidence")


def notes(result: GateResult) -> list[str]:
    """Partial runs on either side. A partial baseline does not fail the gate (its cells are compared on the items
    it has), but whoever reads the verdict must know that it rests on fewer items than the baseline planned."""
    lines = [f"{_describe(run, 'baseline')}; its cells are compared on the rows it has"
             for run in result.baseline_partial]
    verdict = ("judged on the rows it has (--allow-partial)" if result.options.allow_partial
               else "its cells fail (--allow-partial judges them)")
    lines += [f"{_describe(run, 'candidate')}; {verdict}" for run in result.candidate_partial]
    return lines


def _md(text: Any) -> str:
    """A table cell's text, with the characters that would break a Markdown table escaped."""
    return "-" if text is None or text == "" else str(text).replace("\\", "\\\\").replace("|", "\\|").replace(
        "\n", " ")


def _number(value: float, digits: int = 3, signed: bool = False) -> str:
    if not math.isfinite(value):
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _difference(cell: CellResult) -> str:
    """Δ and its interval; the interval is left out where it could not be estimated (the cell then fails)."""
    text = _number(cell.difference, signed=True)
    if math.isfinite(cell.low):
        text += f" [{_number(cell.low, signed=True)}, {_number(cell.high, signed=True)}]"
    return text


def _row(cell: CellResult, options: GateOptions) -> str:
    key = cell.key
    n = f"{cell.matched} ({cell.clusters} clusters)" if cell.matched else "0"
    skipped = [f"{count} {what}" for count, what in ((cell.baseline_only, "baseline only"),
                                                     (cell.candidate_only, "candidate only"),
                                                     (cell.baseline_errors, "baseline errors"),
                                                     (cell.candidate_errors, "candidate errors")) if count]
    skipped += [f"baseline run {run.run_id} partial" for run in cell.baseline_partial]
    if options.allow_partial:  # otherwise the partial candidate runs are among the reasons
        skipped += [f"candidate run {run.run_id} partial (allowed)" for run in cell.candidate_partial]
    text = "; ".join([*cell.reasons, *skipped])
    model = " ".join(str(v) for v in (key["model"], key["dtype"], key["context_length"] and
                                       f"{key['context_length']} tokens") if v)
    values = (cell.status, key["task"], key["method"], f"`{key['cell_params']}`", model, key["mode"],
              key["compression"], _number(cell.baseline_score), _number(cell.candidate_score), _difference(cell), n,
              _number(cell.ttft_ratio, 2), _number(cell.kv_ratio, 2), text)
    return "| " + " | ".join(_md(v) for v in values) + " |"


def _table(cells: list[CellResult], options: GateOptions) -> list[str]:
    header = ("status", "task", "method", "params", "model", "mode", "compression", "baseline", "candidate",
              f"Δ [{options.confidence:.0%} CI]", "n matched", "TTFT ×", "KV ×", "notes")
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *(_row(cell, options) for cell in cells)]


def render_markdown(result: GateResult) -> str:
    """The report as a pull-request comment: verdict, failing cells, then every other cell."""
    lines = [f"### cachebench gate: {'PASS' if result.passed else 'FAIL'}", "", _summary(result), ""]
    if notes(result):
        lines += [*(f"> Note: {note}." for note in notes(result)), ""]
    lines += [f"Baseline: {', '.join(f'`{p}`' for p in result.baseline)}; candidate: "
              f"{', '.join(f'`{p}`' for p in result.candidate)}. Scores are means over items scored (finite, without "
              "error) on both sides; Δ = candidate − baseline with its paired bootstrap interval.", ""]
    failing = result.failed_cells
    rest = [cell for cell in result.cells if not cell.failed]
    if failing:
        lines += ["#### Failing cells", "", *_table(failing, result.options), ""]
    if rest:
        lines += ["#### Other cells" if failing else "#### Cells", "", *_table(rest, result.options), ""]
    return "\n".join(lines)


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def to_json(result: GateResult) -> dict[str, Any]:
    """The report as plain JSON data (NaN becomes null)."""
    return {
        "passed": result.passed,
        "summary": _summary(result).replace("**", ""),
        "baseline": result.baseline,
        "candidate": result.candidate,
        "options": asdict(result.options),
        "notes": notes(result),
        "partial": {"baseline": [asdict(run) for run in result.baseline_partial],
                    "candidate": [asdict(run) for run in result.candidate_partial]},
        "cells": [{name: _finite(value) for name, value in asdict(cell).items()} for cell in result.cells],
    }


def gate_command(baseline: Sequence[Path], candidate: Sequence[Path], options: GateOptions,
                 json_path: Path | None = None) -> int:
    """What `cachebench gate` does: print the Markdown report, write the JSON, return the exit code (0 or 1)."""
    result = run_gate(baseline, candidate, options)
    if json_path is not None:
        try:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(to_json(result), indent=2) + "\n")
        except OSError as exc:
            raise UsageError(f"--json {json_path}: cannot write ({exc.strerror or exc})") from None
    print(render_markdown(result))
    return 0 if result.passed else 1

