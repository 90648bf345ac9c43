"""Every confidence interval the suite reports, defined once: `show`, `gate`, the leaderboard and the semantic
report all call these.

- Mean scores: a percentile bootstrap that resamples whole clusters (episodes: the turns of one episode are
  correlated), `cluster_intervals` for many cells at once, `cluster_bootstrap_ci` for one.
- Rates of a semantic cache (hit rate, error rate): Wilson score intervals, exact enough at any n and defined
  even at 0 or 100%.
- F1 of a semantic cache: a bootstrap over requests, drawn as multinomial outcome counts (`f1_intervals`).

An interval needs at least two clusters (or two requests): with fewer there is nothing to resample and the bounds
are NaN, shown as "–", never as a zero-width interval that reads as certainty.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

RESAMPLES = 2000
MIN_CLUSTERS = 2  # fewer clusters than this: no interval
_DRAWS_AT_ONCE = 1 << 22  # cluster picks drawn in one block: bounds memory on cells of many thousand clusters


def cluster_intervals(cell: np.ndarray, sums: np.ndarray, counts: np.ndarray, cells: int,
                      resamples: int = RESAMPLES, confidence: float = 0.95, seed: int = 0
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, low, high) per cell from one entry per cluster: its cell, score sum and row count.

    Entries must be sorted by cell, and within a cell by cluster label (as np.unique orders labels), so the
    interval does not depend on the order rows were read in. Every cell with k clusters uses the same draws
    (seeded), so one cell's interval does not change when other cells are added.
    """
    cell = np.asarray(cell, dtype=np.int64)
    sums, counts = np.asarray(sums, dtype=float), np.asarray(counts, dtype=float)
    size = np.bincount(cell, minlength=cells)
    total = np.bincount(cell, weights=sums, minlength=cells)
    rows = np.bincount(cell, weights=counts, minlength=cells)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(rows > 0, total / rows, np.nan)
    low, high = np.full(cells, np.nan), np.full(cells, np.nan)
    start = np.concatenate([[0], np.cumsum(size)[:-1]]).astype(np.int64)
    tail = (1.0 - confidence) / 2.0
    for k in np.unique(size[size >= MIN_CLUSTERS]):
        members = np.flatnonzero(size == k)
        columns = start[members][:, None] + np.arange(k)
        means = _resampled_means(sums[columns], counts[columns], int(k), resamples, seed)
        low[members], high[members] = np.quantile(means, [tail, 1.0 - tail], axis=1)
    return mean, low, high


def _resampled_means(sums: np.ndarray, counts: np.ndarray, k: int, resamples: int, seed: int) -> np.ndarray:
    """(cells, resamples) bootstrap means: each resample draws k clusters with replacement, in blocks."""
    rng = np.random.default_rng(seed)
    out = np.empty((sums.shape[0], resamples))
    step = max(1, _DRAWS_AT_ONCE // k)
    for first in range(0, resamples, step):
        picks = rng.integers(0, k, size=(min(step, resamples - first), k))
        flat = (np.arange(len(picks))[:, None] * k + picks).ravel()
        weights = np.bincount(flat, minlength=len(picks) * k).reshape(len(picks), k).astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, first:first + len(picks)] = (sums @ weights.T) / (counts @ weights.T)
    return out


def cluster_bootstrap_ci(scores: Sequence[float], clusters: Sequence[object], resamples: int = RESAMPLES,
                         confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Mean of `scores` and its percentile bootstrap interval, resampling whole clusters; NaN bounds with fewer
    than two clusters, all NaN without scores."""
    values = np.asarray(scores, dtype=float)
    if values.size == 0:
        return math.nan, math.nan, math.nan
    labels, index = np.unique(np.asarray([str(c) for c in clusters]), return_inverse=True)
    sums = np.bincount(index, weights=values, minlength=len(labels))
    counts = np.bincount(index, minlength=len(labels)).astype(float)
    mean, low, high = cluster_intervals(np.zeros(len(labels), dtype=np.int64), sums, counts, 1, resamples,
                                        confidence, seed)
    return float(mean[0]), float(low[0]), float(high[0])


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion; NaN with fewer than two trials."""
    if n < MIN_CLUSTERS:
        return math.nan, math.nan
    z = NormalDist().inv_cdf(1.0 - (1.0 - confidence) / 2.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact bounds where rounding would miss them
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def f1_intervals(counts: np.ndarray, confidence: float = 0.95, seed: int = 0, resamples: int = RESAMPLES,
                 beta: float = 1.0) -> np.ndarray:
    """Per group, (low, high) of F-beta (F1 by default) from its (TP, FP, FN, TN) counts (shape (groups, 4)),
    resampling requests: n requests drawn with replacement give multinomial outcome counts, so those are drawn
    directly. NaN where a group has fewer than two requests or no resample has a defined score."""
    counts = np.asarray(counts, dtype=np.int64).reshape(-1, 4)
    n = counts.sum(axis=1)
    out = np.full((len(counts), 2), np.nan)
    usable = np.flatnonzero(n >= MIN_CLUSTERS)
    if not usable.size:
        return out
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n[usable], counts[usable] / n[usable, None], size=(resamples, usable.size))
    tp, fp, fn = (draws[..., i].astype(float) for i in range(3))
    with np.errstate(invalid="ignore", divide="ignore"):
        precision, recall = tp / (tp + fp), tp / (tp + fn)  # NaN without hits or without positives, as rates()
        b2 = beta * beta
        f1 = np.where(precision + recall == 0, 0.0, (1 + b2) * precision * recall / (b2 * precision + recall))
    f1 = np.where(np.isfinite(f1), f1, np.nan)
    tail = (1 - confidence) / 2
    defined = np.isfinite(f1).any(axis=0)
    if defined.any():
        out[usable[defined]] = np.nanquantile(f1[:, defined], [tail, 1 - tail], axis=0).T
    return out
