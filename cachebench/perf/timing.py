"""Timing discipline: device events on a GPU (host clocks only after a synchronisation), warm-up runs left out,
the median of repeats. Each figure carries how it was taken."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def timer_name(device: torch.device) -> str:
    """What result rows record in `timer` for times taken by `time_ms` on `device`."""
    return "cuda-events" if device.type == "cuda" else "perf_counter"


def how(device: torch.device) -> str:
    return f"{timer_name(device)}, median"


def time_ms(fn: Callable[[], object], device: torch.device) -> float:
    """Milliseconds of one call of `fn`: between CUDA events on a GPU (waited for), else on the host clock."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))
    begin = time.perf_counter()
    fn()
    return (time.perf_counter() - begin) * 1000.0


def median_ms(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median milliseconds of `fn` over `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    return statistics.median(time_ms(fn, device) for _ in range(repeats))
