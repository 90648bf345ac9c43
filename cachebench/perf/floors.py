"""Physical floors measured on the device at start: memory bandwidth (a large device-to-device copy) and matrix
FLOP/s (a large matmul in the model's dtype). A figure's ratio to its floor says how far the harness is from what
the hardware allows."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cachebench.models.anatomy import head_dim
from cachebench.perf.timing import median_ms


@dataclass(frozen=True)
class Floors:
    bandwidth: float  # bytes per second, read + write counted
    flops: float  # floating-point operations per second in `dtype`
    copy_bytes: int
    matmul_n: int

    def read_ms(self, nbytes: float) -> float:
        """Time to stream `nbytes` once through memory."""
        return nbytes / self.bandwidth * 1000.0

    def compute_ms(self, flops: float) -> float:
        return flops / self.flops * 1000.0

    def describe(self, dtype: str) -> str:
        """The floors in units that show their digits on any device (a CPU's FLOP/s are GFLOP/s, not 0.0 TFLOP/s)."""
        return (f"{rate(self.bandwidth, 'B/s')} ({self.copy_bytes / 2**20:,.0f} MiB copy), "
                f"{rate(self.flops, 'FLOP/s')} ({self.matmul_n}^3 {dtype} matmul)")


def rate(value: float, unit: str) -> str:
    """`value` per second with the largest SI prefix that keeps it at or above 1, three significant digits."""
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def measure_floors(device: torch.device, dtype: torch.dtype, repeats: int = 5) -> Floors:
    """1 GiB copies and an 8192^3 matmul on a GPU; 256 MiB and 2048^3 on a CPU (to stay quick)."""
    cuda = device.type == "cuda"
    copy_bytes = (1 << 30) if cuda else (256 << 20)
    n = 8192 if cuda else 2048
    source = torch.empty(copy_bytes, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    copy_ms = median_ms(lambda: target.copy_(source), device, repeats)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    matmul_ms = median_ms(lambda: torch.matmul(a, b), device, repeats)
    return Floors(bandwidth=2 * copy_bytes / (copy_ms / 1000.0), flops=2 * n**3 / (matmul_ms / 1000.0),
                  copy_bytes=copy_bytes, matmul_n=n)


def prefill_flops(config: object, tokens: int) -> float:
    """Matmul FLOPs of a causal prefill: 2 x (non-embedding weights) per token, plus QK^T and PV over the causal
    half of the tokens x tokens square in every layer."""
    hidden = config.hidden_size
    layers = config.num_hidden_layers
    heads = config.num_attention_heads
    dim = head_dim(config)
    kv = config.num_key_value_heads * dim
    per_layer = hidden * (heads * dim) * 2 + hidden * kv * 2 + 3 * hidden * config.intermediate_size
    dense = 2 * tokens * layers * per_layer + 2 * hidden * config.vocab_size  # the lm_head runs on the last token
    attention = 2 * 2 * layers * heads * dim * tokens * tokens / 2
    return dense + attention
