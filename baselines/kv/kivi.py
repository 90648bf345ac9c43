"""`kivi`: keys quantized per channel, values per token, newest tokens in full precision (Liu et al., 2024, "KIVI: A
Tuning-Free Asymmetric 2bit Quantization for KV Cache", arXiv:2402.02750).

Every layer's cache is a `KIVILayer` (cachebench.kvcompress.quantize): asymmetric uniform quantization with a
minimum and a scale per group, keys grouped per channel over `group_size` tokens, values per token over `group_size`
channels, and a full-precision residual of the newest tokens (keys: up to `residual` tokens, then quantized all
together; values: always the newest `residual`). The cache holds the packed codes, scales and minima, never a
full-precision copy of a quantized token; attention reads them back for each forward. Nothing is evicted: every
token stays, at lower precision.

Departures from the paper and the authors' code:
  - attention reads the quantized part back as dense keys and values and runs the model's own attention kernel; the
    authors fuse the read-back into the matrix products (a speed optimisation that computes the same numbers up to
    float rounding);
  - minima and scales are computed in float32 and stored in the model's dtype, codes computed against the stored
    values (the authors compute them in float16); a constant group gets scale 0 and codes 0;
  - codes are packed 8/bits to a byte along the head dimension (the authors: 32/bits to an int32 word);
  - a forward of several tokens on a non-empty cache (a question after a context, a multi-turn prompt) is a case the
    authors' code leaves out (their decode path takes one token): here it appends all of them to the residuals, then
    quantizes every whole `residual` block of keys and every value beyond the newest `residual`, which is exactly
    the state feeding the same tokens one at a time reaches;
  - keys and values share `bits` and `group_size` (the authors' code allows different key and value bits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import DynamicCache

from cachebench.kvcompress.quantize import KIVILayer, codes_per_byte
from cachebench.method import KVMethod
from cachebench.models.anatomy import head_dim
from cachebench.params import MAX_TOKENS, param


@dataclass(frozen=True)
class KIVIParams:
    bits: int = param(2, "bits per quantized key and value element", choices=(2, 4, 8))
    group_size: int = param(32, "elements sharing one minimum and scale: tokens per key channel group, channels per "
                            "value token group (must divide the head dimension)", low=1, high=MAX_TOKENS)
    residual: int = param(128, "newest tokens kept in full precision (a multiple of group_size)", low=1,
                          high=MAX_TOKENS)


class KIVI(KVMethod):
    name = "kivi"
    summary = ("Asymmetric 2-bit quantization: keys per channel, values per token, newest tokens in full precision "
               "(Liu et al., 2024).")
    Params = KIVIParams
    fixed_cache_while_decoding = False  # tokens leave the residual and are quantized while decoding

    def check_config(self, config: Any) -> None:
        """Keys are quantized a residual at a time in whole token groups; value groups split the head dimension,
        and codes pack into whole bytes along it."""
        if self.params.residual % self.params.group_size:
            raise ValueError(f"residual ({self.params.residual}) must be a multiple of group_size "
                             f"({self.params.group_size}): keys are quantized a residual at a time, in whole token "
                             "groups")
        dim = head_dim(config)
        if dim % self.params.group_size:
            raise ValueError(f"group_size {self.params.group_size} does not divide the head dimension {dim}")
        if dim % codes_per_byte(self.params.bits):
            raise ValueError(f"{self.params.bits}-bit codes do not pack into whole bytes of a head dimension {dim}")

    def new_cache(self, model: Any) -> DynamicCache:
        cache = DynamicCache(config=model.config)
        p = self.params
        cache.layers = [KIVILayer(bits=p.bits, group_size=p.group_size, residual=p.residual) for _ in cache.layers]
        return cache
