"""Choosing a similarity threshold from labelled observations: best F0.5 over a grid, ties to the stricter.

Kept apart from cachebench.semantic.calibrate (which drives whole runs through the runner) so that a method can
fit a threshold online (`category-aware`'s `unknown=calibrate`) with numpy alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

GRID: tuple[float, ...] = tuple(round(0.50 + 0.01 * step, 2) for step in range(50))  # 0.50 .. 0.99
_TIE = 1e-12  # F0.5 values closer than this are a tie (equal ratios computed from different counts)


def f05_by_threshold(similarities: np.ndarray, right: np.ndarray, grid: Sequence[float] = GRID) -> np.ndarray:
    """F0.5 of serving every observation whose similarity reaches each threshold of `grid` (0 without a right
    hit): a right observation served is a TP, a wrong one an FP, a right one not served an FN."""
    served = np.asarray(similarities, dtype=float)[None, :] >= np.asarray(grid, dtype=float)[:, None]
    right = np.asarray(right, dtype=bool)[None, :]
    tp = (served & right).sum(axis=1)
    fp = (served & ~right).sum(axis=1)
    fn = (~served & right).sum(axis=1)
    return np.where(tp > 0, 1.25 * tp / np.maximum(1.25 * tp + 0.25 * fn + fp, 1e-300), 0.0)


def pick(thresholds: Sequence[float], scores: Sequence[float]) -> tuple[float, float]:
    """(threshold, score) of the best score, ties to the higher threshold; NaN scores never win."""
    values = np.nan_to_num(np.asarray(scores, dtype=float), nan=-np.inf)
    order = np.argsort(np.asarray(thresholds, dtype=float), kind="stable")
    best = values.max()
    winner = next(i for i in order[::-1] if values[i] >= best - _TIE)
    return float(thresholds[winner]), float(values[winner])


def best_threshold(similarities: np.ndarray, right: np.ndarray, grid: Sequence[float] = GRID) -> tuple[float, float]:
    """The grid threshold with the best F0.5 over (similarity, right) observations, and that F0.5; with no
    right observation every threshold scores 0 and the tie goes to the strictest."""
    return pick(grid, f05_by_threshold(similarities, right, grid))
