"""Scores of a semantic cache from judged requests: vCache's rates, the cost model, and the
area under a threshold sweep's hit-rate-versus-error-rate curve.

Definitions (per category and overall; warm-up requests and failed rows excluded):
  hit rate = (TP+FP)/n;  error rate = FP/n (vCache's);  precision = TP/(TP+FP);  recall = TP/(TP+FN);
  F1 and F0.5 (precision weighted);  stale-hit rate = stale hits / n.
Cost model, in milliseconds per request, with L the cache's overhead on every request (embedding + lookup),
F the fetch of a hit, C the LLM's cost and P the penalty of a wrong answer (a false or stale hit; default C, the
price of asking again): with hit rate h and wrong share q = wrong hits / hits,
  saving(h) = h * (C - F - q*P) - L,   break-even hit rate h* = L / (C - F - q*P)   (infinite when C - F <= q*P).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Rates:
    n: int
    tp: int
    fp: int
    fn: int
    tn: int
    stale: int
    hit_rate: float
    error_rate: float
    precision: float
    recall: float
    f1: float
    f05: float
    stale_rate: float


def _ratio(top: float, bottom: float) -> float:
    return top / bottom if bottom else float("nan")


def f_beta(precision: float, recall: float, beta: float) -> float:
    if np.isnan(precision) or np.isnan(recall) or precision + recall == 0:
        return float("nan") if np.isnan(precision) or np.isnan(recall) else 0.0
    b2 = beta * beta
    return (1 + b2) * precision * recall / (b2 * precision + recall)


def rates(outcomes: Sequence[str], stale: Sequence[bool]) -> Rates:
    """The rates of one group of judged requests."""
    codes = np.asarray(outcomes)
    n = len(codes)
    tp, fp, fn, tn = (int(np.sum(codes == code)) for code in ("TP", "FP", "FN", "TN"))
    stale_hits = int(np.sum(np.asarray(stale, dtype=bool)))
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return Rates(n, tp, fp, fn, tn, stale_hits, _ratio(tp + fp, n), _ratio(fp, n), precision, recall,
                 f_beta(precision, recall, 1.0), f_beta(precision, recall, 0.5), _ratio(stale_hits, n))


@dataclass(frozen=True)
class Cost:
    overhead_ms: float  # L: embedding + lookup, paid on every request
    fetch_ms: float  # F
    llm_ms: float  # C
    penalty_ms: float  # P
    wrong_share: float  # q
    break_even: float  # h*
    saving_ms: float  # per request at the measured hit rate
    saving_share: float  # saving / C


def cost_model(hit_rate: float, wrong_hits: int, hits: int, overhead_ms: float, fetch_ms: float, llm_ms: float,
               penalty_ms: float | None = None) -> Cost:
    penalty = llm_ms if penalty_ms is None else penalty_ms
    wrong_share = wrong_hits / hits if hits else 0.0
    gain = llm_ms - fetch_ms - wrong_share * penalty  # what one hit saves
    break_even = overhead_ms / gain if gain > 0 else float("inf")
    saving = hit_rate * gain - overhead_ms
    return Cost(overhead_ms, fetch_ms, llm_ms, penalty, wrong_share, break_even, saving, _ratio(saving, llm_ms))


def frontier_area(points: Sequence[tuple[float, float]], max_error: float) -> float:
    """Mean best hit rate over error budgets 0..max_error, from (error rate, hit rate) points of a sweep.

    At each error budget e the achievable hit rate is the best of the points whose error rate is at most e (a
    step function); its mean over [0, max_error] is the normalised area under the hit-rate-versus-error-rate
    curve: 1 would be every request a hit at no error.
    """
    if max_error <= 0 or not points:
        return float("nan")
    ordered = sorted((min(e, max_error), h) for e, h in points if e <= max_error)
    area, best, previous = 0.0, 0.0, 0.0
    for error, hit in ordered:
        area += best * (error - previous)
        best, previous = max(best, hit), error
    area += best * (max_error - previous)
    return area / max_error
