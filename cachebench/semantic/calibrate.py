"""Fit `category-aware`'s per-category thresholds on labelled requests, and write them as a policy file.

A threshold is only as good as the requests it was chosen on, so it is chosen on held-out data: a task's stream
of another seed (1 by default; benchmarks score seed 0) or a labelled file of the user's own. Every threshold of
a grid is run as a category-aware cache with that one threshold for every category (each category in its own
partition, no TTL, no quota, exact search), through the same runner and judging as `cachebench eval`; per
category, the threshold with the best F0.5 over the judged requests wins (precision weighted: a false hit costs
more than a miss), ties going to the higher threshold. A category whose requests give no way to rank
thresholds (no right entry ever to be served, or no wrong one ever served even at the loosest threshold) is
left out with a note and keeps the policy's default.

The picker over (similarity, right) observations lives in cachebench.semantic.threshold_fit, which
`category-aware` also uses to fit an unknown category's threshold online (`unknown=calibrate`) without
importing the runner this module drives.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml

from cachebench.errors import UsageError
from cachebench.semantic.scoring import Rates
from cachebench.semantic.threshold_fit import GRID, pick

if TYPE_CHECKING:
    from cachebench.semantic.embedder import Embedder
    from cachebench.semantic.stream import Stream

@dataclass(frozen=True)
class CategoryFit:
    """One category's judged requests at every threshold, and what was chosen."""

    category: str
    rates: dict[float, Rates]  # per threshold of the grid
    threshold: float | None  # None: not fitted (see note)
    note: str = ""


@dataclass(frozen=True)
class Calibration:
    """What `calibrate` found for one task."""

    task: str
    seed: int
    mode: str  # stream, pair-retrieval or pair-pairwise
    thresholds: tuple[float, ...]
    categories: dict[str, CategoryFit]

    @property
    def policy(self) -> dict[str, dict[str, float]]:
        """The fitted categories as a category-aware policy mapping (thresholds only: the rest of each entry is
        merged from the built-in policy when the file is read)."""
        return {name: {"threshold": fit.threshold} for name, fit in sorted(self.categories.items())
                if fit.threshold is not None}

    @property
    def notes(self) -> list[str]:
        """One line per category left out."""
        return [fit.note for _, fit in sorted(self.categories.items()) if fit.note]


def write_policy_yaml(policy: dict[str, dict[str, float]], path: str | Path, header: str = "") -> Path:
    """Write a policy mapping as YAML that `--param policy=FILE` of category-aware reads; `header` becomes
    comment lines at the top (where the thresholds came from)."""
    target = Path(path)
    comments = "".join(f"# {line}\n" for line in header.splitlines())
    body = yaml.safe_dump({str(k): {f: float(v) for f, v in entry.items()} for k, entry in policy.items()},
                          sort_keys=True, default_flow_style=False)
    try:
        target.write_text(comments + body, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write the policy to {target} ({exc.strerror or exc})") from None
    return target


def _check_grid(thresholds: Sequence[float]) -> tuple[float, ...]:
    grid = tuple(sorted({round(float(t), 6) for t in thresholds}))
    if not grid:
        raise UsageError("calibrate needs at least one threshold")
    if grid[0] < -1.0 or grid[-1] > 1.0 or not all(np.isfinite(grid)):
        raise UsageError("calibrate: thresholds must be cosine similarities between -1 and 1")
    return grid


def fit_stream(stream: Stream, embedder: Embedder, thresholds: Sequence[float] = GRID, pair_protocol: str = "retrieval"
               ) -> dict[str, CategoryFit]:
    """Run `stream` once per threshold and pick each category's best-F0.5 threshold (see the module's
    docstring). `embedder` should remember its vectors (Embedder.remember): the stream is embedded once."""
    from cachebench.registry import build_method
    from cachebench.semantic.runner import StreamRunner
    from cachebench.semantic.scoring import rates

    grid = _check_grid(thresholds)
    categories = sorted({request.category for request in stream.all_requests()})
    judged: dict[str, dict[float, Rates]] = {category: {} for category in categories}
    for threshold in grid:
        policy = {category: {"threshold": threshold, "ttl": 0, "quota": 0, "relax": 0, "cache": True}
                  for category in categories}
        method = build_method("category-aware", ["index=exact", "store=memory", "unknown=default",
                                                 f"policy={json.dumps(policy)}"])
        method.open(embedder.dim, f"calibrate-{threshold}")
        try:
            results = StreamRunner(method, embedder, "precomputed").run(stream, pair_protocol=pair_protocol)
        finally:
            method.close()
        failed = next((result.error for result in results if result.error), None)
        if failed:
            raise UsageError(f"calibrating at threshold {threshold:.2f} failed: {failed}")
        by_category: dict[str, list] = {category: [] for category in categories}
        for result in results:
            if not result.warmup:
                by_category[result.request.category].append(result)
        for category, members in by_category.items():
            if members:
                judged[category][threshold] = rates([m.outcome for m in members], [m.stale for m in members])
    return {category: _choose(category, by_threshold, grid) for category, by_threshold in judged.items()
            if by_threshold}


def _choose(category: str, by_threshold: dict[float, Rates], grid: tuple[float, ...]) -> CategoryFit:
    fit = CategoryFit(category, by_threshold, None)
    if not any(r.tp + r.fn for r in by_threshold.values()):
        return replace(fit, note=f"category {category!r}: no request had a right entry to be served at any "
                                 "threshold (no class repeats), so no threshold can be fitted; left to the default")
    if not any(r.fp for r in by_threshold.values()):
        return replace(fit, note=f"category {category!r}: no threshold down to {grid[0]:.2f} served a wrong entry, "
                                 "so the requests do not bound it; left to the default")
    threshold, _ = pick(list(by_threshold), [r.f05 for r in by_threshold.values()])
    return replace(fit, threshold=threshold)


def calibrate(task: str, data: str | None = None, seed: int = 1, limit: int | None = None,
              embedder: str = "embedded", include_path: Sequence[str] = (), thresholds: Sequence[float] = GRID,
              pair_protocol: str | None = None, loaded_embedder: Embedder | None = None) -> Calibration:
    """Fit one semantic task's per-category thresholds on seed `seed` (a file task: on `data`).

    Raises UsageError, in one line, for what cannot be calibrated: an unknown task or a group, a KV task, a data
    file missing or not taken by the task, a bad --limit, seed, threshold or pair protocol, an embedder that
    cannot load, or no category that could be fitted. Categories that cannot be fitted are left out of the
    policy, each with a note (Calibration.notes)."""
    from cachebench.runs import EvalRequest
    from cachebench.semantic.embedder import load_embedder
    from cachebench.semantic.evaluate import build_stream
    from cachebench.semantic.stream import PAIR_PROTOCOLS
    from cachebench.taskspec import MAX_LIMIT, check_data, resolve_tasks

    specs = resolve_tasks(task, include_path)
    if len(specs) != 1:
        raise UsageError(f"calibrate takes one task; {task} is a group of {len(specs)} "
                         f"({', '.join(spec.name for spec in specs)})")
    spec = specs[0]
    if spec.track != "semantic":
        raise UsageError(f"calibrate fits a semantic cache's thresholds; {spec.name} is a KV-cache task")
    if limit is not None and not 1 <= limit <= MAX_LIMIT:
        raise UsageError(f"--limit must be between 1 and {MAX_LIMIT}, got {limit}")
    if seed < 0:
        raise UsageError(f"--seed must be at least 0, got {seed}")
    if pair_protocol is not None:
        if pair_protocol not in PAIR_PROTOCOLS:
            raise UsageError(f"--pair-protocol {pair_protocol!r}: expected one of {', '.join(PAIR_PROTOCOLS)}")
        if spec.mode != "pair":
            raise UsageError(f"--pair-protocol applies to pair tasks; {spec.name} is a request stream")
    grid = _check_grid(thresholds)
    check_data(data, specs, task)
    stream = build_stream(spec, EvalRequest(method="category-aware", task=spec.name, seed=seed, limit=limit,
                                            data=data, include_path=tuple(include_path)))
    protocol = pair_protocol or spec.pair_protocol or "retrieval"
    loaded = loaded_embedder or load_embedder(embedder)
    if not loaded.remember:  # each threshold's run replays the one stream
        loaded = replace(loaded, remember=True, _memo={})
    fits = fit_stream(stream, loaded, grid, protocol)
    result = Calibration(spec.name, seed, "stream" if stream.protocol == "stream" else f"pair-{protocol}", grid, fits)
    if not result.policy:
        reason = result.notes[0] if result.notes else "it has no judged requests"
        raise UsageError(f"task {spec.name}: no category could be fitted ({reason})")
    return result
