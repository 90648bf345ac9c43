"""Confidence intervals for mean scores: a bootstrap over episodes, since turns of one episode are correlated."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def cluster_bootstrap_ci(
    scores: Sequence[float], clusters: Sequence[str], resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of `scores` and its percentile bootstrap interval, resampling whole clusters (episodes)."""
    values = np.asarray(scores, dtype=float)
    if values.size == 0:
        return float("nan"), float("nan"), float("nan")
    labels, index = np.unique(np.asarray(clusters), return_inverse=True)
    sums = np.bincount(index, weights=values, minlength=len(labels))
    counts = np.bincount(index, minlength=len(labels)).astype(float)
    mean = float(values.mean())
    if len(labels) < 2:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(labels), size=(resamples, len(labels)))
    means = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return mean, float(low), float(high)
