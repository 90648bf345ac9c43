"""Time and memory measurement that reads the same on CPU and GPU.

GPU times synchronize the device before reading the host clock, so queued kernels are counted. Peak memory is
CUDA's max-allocated on GPU (weights included) and the growth of the process's peak RSS on CPU (Linux VmHWM,
reset through /proc/self/clear_refs).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


class Clock:
    """Milliseconds on the host clock, taken after the device has finished its queued work."""

    def __init__(self, device: torch.device) -> None:
        self._cuda = device.type == "cuda"

    @property
    def method(self) -> str:
        """How times were taken, recorded in each row."""
        return "cuda-sync+perf_counter" if self._cuda else "perf_counter"

    def now_ms(self) -> float:
        if self._cuda:
            torch.cuda.synchronize()
        return time.perf_counter() * 1000.0


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """Peak memory over an interval: CUDA max-allocated bytes, or growth of peak RSS on CPU."""

    def __init__(self, device: torch.device) -> None:
        self._device = device
        self._cuda = device.type == "cuda"
        self._baseline = 0

    def start(self) -> None:
        if self._cuda:
            torch.cuda.reset_peak_memory_stats(self._device)
            return
        with contextlib.suppress(OSError):  # "5" resets the peak RSS (VmHWM) to the current RSS
            _CLEAR_REFS.write_text("5")
        self._baseline = (_status_kib("VmRSS") or 0) * 1024

    def peak_bytes(self) -> int:
        if self._cuda:
            return int(torch.cuda.max_memory_allocated(self._device))
        peak = (_status_kib("VmHWM") or 0) * 1024
        return max(0, peak - self._baseline)

