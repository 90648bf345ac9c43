"""Timing discipline: device events on a GPU (host clocks only after a synchronisation), warm-up runs left out,
the median of repeats. Each figure carries how it was taken."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def how(device: torch.device) -> str:
    return "cuda-events, median" if device.type == "cuda" else "perf_counter, median"


def median_ms(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median milliseconds of `fn` over `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            fn()
            times.append((time.perf_counter() - begin) * 1000.0)
    return statistics.median(times)
