"""Bootstrap intervals for many cells at once, so a million rows need no Python loop per cell or row.

`cluster_intervals` gives exactly what `cachebench.stats.cluster_bootstrap_ci` gives cell by cell (same seed,
same draws, clusters in the same sorted order): the draws are turned into per-cluster pick counts and all cells
with the same number of clusters are resampled by one matrix product.

`outcome_intervals` is `cachebench.semantic.scoring.bootstrap_intervals` for many groups: resampling n requests
with replacement draws the outcome counts from a multinomial, so it samples those counts directly (same
distribution, other random numbers).
"""

from __future__ import annotations

import numpy as np

from cachebench.semantic.scoring import RESAMPLES as OUTCOME_RESAMPLES

CLUSTER_RESAMPLES = 2000  # cachebench.stats.cluster_bootstrap_ci's default


def cluster_intervals(cell: np.ndarray, sums: np.ndarray, counts: np.ndarray, cells: int,
                      resamples: int = CLUSTER_RESAMPLES, confidence: float = 0.95, seed: int = 0
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, low, high) per cell from one entry per cluster: its cell, score sum and row count.

    Entries must be sorted by cell, and within a cell by cluster label, as np.unique orders them.
    """
    size = np.bincount(cell, minlength=cells)
    total = np.bincount(cell, weights=sums, minlength=cells)
    rows = np.bincount(cell, weights=counts, minlength=cells)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(rows > 0, total / rows, np.nan)
    low, high = mean.copy(), mean.copy()
    start = np.concatenate([[0], np.cumsum(size)[:-1]])
    tail = (1.0 - confidence) / 2.0
    for k in np.unique(size[size >= 2]):
        members = np.flatnonzero(size == k)
        columns = start[members][:, None] + np.arange(k)
        weights = _pick_counts(int(k), resamples, seed)
        means = (sums[columns] @ weights.T) / (counts[columns] @ weights.T)  # (members, resamples)
        low[members], high[members] = np.quantile(means, [tail, 1.0 - tail], axis=1)
    return mean, low, high


def _pick_counts(k: int, resamples: int, seed: int) -> np.ndarray:
    """How often each of k clusters is drawn in each resample, from cluster_bootstrap_ci's own draws."""
    picks = np.random.default_rng(seed).integers(0, k, size=(resamples, k))
    flat = (np.arange(resamples)[:, None] * k + picks).ravel()
    return np.bincount(flat, minlength=resamples * k).reshape(resamples, k).astype(float)


def outcome_intervals(counts: np.ndarray, confidence: float = 0.95, seed: int = 0,
                      resamples: int = OUTCOME_RESAMPLES) -> dict[str, np.ndarray]:
    """Per group, (low, high) of hit rate, error rate and F1 from its (TP, FP, FN, TN) counts (shape (groups, 4));
    NaN where a group has fewer than two requests or no finite resample, as bootstrap_intervals leaves it out."""
    counts = np.asarray(counts, dtype=np.int64).reshape(-1, 4)
    n = counts.sum(axis=1)
    out = {name: np.full((len(counts), 2), np.nan) for name in ("hit_rate", "error_rate", "f1")}
    usable = np.flatnonzero(n >= 2)
    if not usable.size:
        return out
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n[usable], counts[usable] / n[usable, None], size=(resamples, usable.size))
    tp, fp, fn = (draws[..., i].astype(float) for i in range(3))
    hits = tp + fp
    size = n[usable].astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision, recall = tp / hits, tp / (tp + fn)
        f1 = 2 * precision * recall / (precision + recall)
    tail = (1 - confidence) / 2
    for name, values in (("hit_rate", hits / size), ("error_rate", fp / size), ("f1", f1)):
        values = np.where(np.isfinite(values), values, np.nan)
        finite = np.isfinite(values).any(axis=0)
        if finite.any():
            bounds = np.nanquantile(values[:, finite], [tail, 1 - tail], axis=0)
            out[name][usable[finite]] = bounds.T
    return out
