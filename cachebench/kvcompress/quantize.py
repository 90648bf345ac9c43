"""Asymmetric group-wise integer quantization of keys and values, and a cache layer that really stores the codes
(KIVI: Liu et al., 2024, "KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache", arXiv:2402.02750).

KIVI quantizes a group of numbers x with B bits to codes q = round((x − z) / s), clamped to [0, 2^B − 1], with the
group's minimum z and scale s = (max − min) / (2^B − 1); it reads back x̂ = q·s + z. Keys are quantized **per
channel**: a group is one channel of one head over `group_size` consecutive tokens (keys have outlier channels, so a
channel's own range is what fits them). Values are quantized **per token**: a group is `group_size` consecutive
channels of one token (the attention output mixes values per token, so a token's own error stays local).

The codes are packed 8/B to a byte along the head dimension (the authors pack 32/B codes into int32 words, along
tokens for keys and channels for values; the layout changes no code or scale). Minima and scales are computed in
float32, stored in the dtype of the incoming keys, and the codes are computed against those stored values, so the
stored triple dequantizes to within half a scale of the input (the authors compute all of it in float16; a group
whose values are all equal has scale 0: its codes are 0 and it reads back exactly, where theirs would divide by 0).

`KIVILayer` keeps the newest tokens in full precision (the residual, as the paper's Algorithm 1): keys collect in
the residual until it holds `residual` tokens, which are then quantized together (residual / group_size token
groups per channel) and the residual emptied; values keep the newest `residual` tokens and quantize each older one
as it leaves. After L tokens, keys hold L − (L mod residual) quantized tokens and values max(0, L − residual),
whether the tokens came in one prefill or one at a time: key groups always start at multiples of `group_size`, so
the two give the same codes. A forward of n new tokens attends to the stored state before it plus the n new tokens
in full precision, then moves what leaves the residual, as the authors' attention computes the step from the
residual including the new token and quantizes afterwards.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicLayer

# the layer's stored tensors besides the residual (keys / values), as attribute names
QUANTIZED_PARTS = ("key_codes", "key_scale", "key_min", "value_codes", "value_scale", "value_min")


def code_max(bits: int) -> int:
    """The largest code of a B-bit quantizer (2^B − 1)."""
    return (1 << bits) - 1


def codes_per_byte(bits: int) -> int:
    """How many B-bit codes one byte holds."""
    if bits not in (1, 2, 4, 8):
        raise ValueError(f"bits must be 1, 2, 4 or 8 to pack codes into bytes (got {bits})")
    return 8 // bits


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes (..., d) with values below 2^bits -> uint8 (..., d·bits/8): code j of a byte sits at bits j·B."""
    per = codes_per_byte(bits)
    if codes.shape[-1] % per:
        raise ValueError(f"the last dimension ({codes.shape[-1]}) must be a multiple of {per} to pack {bits}-bit codes")
    grouped = codes.to(torch.uint8).reshape(*codes.shape[:-1], codes.shape[-1] // per, per)
    shifts = torch.arange(per, device=codes.device, dtype=torch.uint8) * bits
    return torch.bitwise_left_shift(grouped, shifts).sum(dim=-1, dtype=torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 (..., n) -> codes uint8 (..., n·8/bits), the inverse of `pack_codes`."""
    per = codes_per_byte(bits)
    shifts = torch.arange(per, device=packed.device, dtype=torch.uint8) * bits
    codes = torch.bitwise_right_shift(packed.unsqueeze(-1), shifts) & code_max(bits)
    return codes.reshape(*packed.shape[:-1], packed.shape[-1] * per)


@functools.cache
def _code_table(bits: int, device: torch.device) -> torch.Tensor:
    """(256, 8/bits) float32: the codes each byte value holds, for reading packed codes back with one lookup (made
    outside inference mode, so the cached table serves calls in and out of it)."""
    with torch.inference_mode(False):
        return unpack_codes(torch.arange(256, dtype=torch.uint8, device=device).unsqueeze(-1), bits).float()


def _codes_as_float(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 (..., n) -> float32 codes (..., n·8/bits): `unpack_codes` as a single table lookup."""
    table = _code_table(bits, packed.device)
    return F.embedding(packed.int(), table).reshape(*packed.shape[:-1], packed.shape[-1] * table.shape[-1])


def _quantize_groups(grouped: torch.Tensor, dim: int, bits: int, dtype: torch.dtype
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes (uint8, grouped's shape), scale and minimum (dtype, `dim` reduced) of the groups along `dim`."""
    values = grouped.float()
    low = values.amin(dim=dim)
    high = values.amax(dim=dim)
    scale = ((high - low) / code_max(bits)).to(dtype)
    minimum = low.to(dtype)
    stored_scale = scale.float().unsqueeze(dim)
    divisor = torch.where(stored_scale > 0, stored_scale, torch.ones_like(stored_scale))
    codes = ((values - minimum.float().unsqueeze(dim)) / divisor).round().clamp(0, code_max(bits))
    return codes.to(torch.uint8), scale, minimum


def quantize_keys(keys: torch.Tensor, bits: int, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-channel quantization of keys (batch, heads, T, d), T a multiple of `group_size`: packed codes uint8
    (batch, heads, T, d·bits/8), scale and minimum (batch, heads, T / group_size, d) in keys' dtype."""
    batch, heads, tokens, dim = keys.shape
    if tokens % group_size:
        raise ValueError(f"keys are quantized in groups of {group_size} tokens (got {tokens} tokens)")
    grouped = keys.reshape(batch, heads, tokens // group_size, group_size, dim)
    codes, scale, minimum = _quantize_groups(grouped, 3, bits, keys.dtype)
    return pack_codes(codes.reshape(batch, heads, tokens, dim), bits), scale, minimum


def quantize_values(values: torch.Tensor, bits: int, group_size: int
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token quantization of values (batch, heads, T, d), d a multiple of `group_size`: packed codes uint8
    (batch, heads, T, d·bits/8), scale and minimum (batch, heads, T, d / group_size) in values' dtype."""
    batch, heads, tokens, dim = values.shape
    if dim % group_size:
        raise ValueError(f"values are quantized in groups of {group_size} channels (head dimension {dim})")
    grouped = values.reshape(batch, heads, tokens, dim // group_size, group_size)
    codes, scale, minimum = _quantize_groups(grouped, 4, bits, values.dtype)
    return pack_codes(codes.reshape(batch, heads, tokens, dim), bits), scale, minimum


def dequantize_keys(codes: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor, bits: int) -> torch.Tensor:
    """Keys (batch, heads, T, d) in the scale's dtype from `quantize_keys`'s output."""
    unpacked = _codes_as_float(codes, bits)
    batch, heads, tokens, dim = unpacked.shape
    groups = scale.shape[2]
    grouped = unpacked.reshape(batch, heads, groups, tokens // max(groups, 1), dim)
    out = torch.addcmul(minimum.float().unsqueeze(3), grouped, scale.float().unsqueeze(3))
    return out.to(scale.dtype).reshape(batch, heads, tokens, dim)


def dequantize_values(codes: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor, bits: int) -> torch.Tensor:
    """Values (batch, heads, T, d) in the scale's dtype from `quantize_values`'s output."""
    unpacked = _codes_as_float(codes, bits)
    batch, heads, tokens, dim = unpacked.shape
    groups = scale.shape[-1]
    grouped = unpacked.reshape(batch, heads, tokens, groups, dim // groups)
    out = torch.addcmul(minimum.float().unsqueeze(-1), grouped, scale.float().unsqueeze(-1))
    return out.to(scale.dtype).reshape(batch, heads, tokens, dim)


class KIVILayer(DynamicLayer):
    """A cache layer holding KIVI's packed codes, scales and minima for the older tokens and the residual (`keys`,
    `values`, full precision) for the newest; keys and values have residuals of different lengths.

    `update` returns transient dense (batch, heads, L, d) keys and values for attention: the quantized part read
    back, then the residual. Nothing else is stored, so counting the layer's tensor attributes counts exactly the
    bytes it holds."""

    is_croppable = False

    def __init__(self, bits: int = 2, group_size: int = 32, residual: int = 128, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        codes_per_byte(bits)  # refuses widths that do not pack into bytes
        if group_size < 1 or residual < 1 or residual % group_size:
            raise ValueError(f"residual ({residual}) must be a positive multiple of group_size ({group_size})")
        self.bits, self.group_size, self.residual = bits, group_size, residual
        self._clear_quantized()

    def _clear_quantized(self) -> None:
        for name in QUANTIZED_PARTS:
            setattr(self, name, None)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Empty residuals and quantized parts shaped for the incoming heads (no reference to the new tokens)."""
        self.device = key_states.device
        batch, heads, _, dim = key_states.shape
        packed = dim // codes_per_byte(self.bits)
        if dim % self.group_size or dim % codes_per_byte(self.bits):
            raise ValueError(f"group_size {self.group_size} and {self.bits}-bit packing must divide the head "
                             f"dimension {dim}")
        dtype = key_states.dtype
        self.keys = key_states.new_empty(batch, heads, 0, dim)
        self.values = value_states.new_empty(batch, heads, 0, dim)
        self.key_codes = key_states.new_empty(batch, heads, 0, packed, dtype=torch.uint8)
        self.key_scale = key_states.new_empty(batch, heads, 0, dim, dtype=dtype)
        self.key_min = key_states.new_empty(batch, heads, 0, dim, dtype=dtype)
        self.value_codes = value_states.new_empty(batch, heads, 0, packed, dtype=torch.uint8)
        self.value_scale = value_states.new_empty(batch, heads, 0, dim // self.group_size, dtype=value_states.dtype)
        self.value_min = value_states.new_empty(batch, heads, 0, dim // self.group_size, dtype=value_states.dtype)
        self.is_initialized = True

    def quantized_lengths(self) -> tuple[int, int]:
        """Tokens held quantized: (keys, values)."""
        if not self.is_initialized:
            return 0, 0
        return int(self.key_codes.shape[-2]), int(self.value_codes.shape[-2])

    def residual_lengths(self) -> tuple[int, int]:
        """Tokens held in full precision: (keys, values)."""
        if not self.is_initialized:
            return 0, 0
        return int(self.keys.shape[-2]), int(self.values.shape[-2])

    def dequantized(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The quantized tokens read back, keys and values (batch, heads, T_q, d): transient."""
        keys = dequantize_keys(self.key_codes, self.key_scale, self.key_min, self.bits)
        values = dequantize_values(self.value_codes, self.value_scale, self.value_min, self.bits)
        return keys, values

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        old_keys, old_values = self.dequantized()
        keys = torch.cat([self.keys, key_states], dim=-2)
        values = torch.cat([self.values, value_states], dim=-2)
        dense_keys = torch.cat([old_keys, keys], dim=-2)
        dense_values = torch.cat([old_values, values], dim=-2)
        self._settle(keys, values)
        return dense_keys, dense_values

    def _settle(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Quantize what leaves the residuals and keep the rest (copies, so no view pins the forward's tensors)."""
        moving = keys.shape[-2] - keys.shape[-2] % self.residual
        if moving:
            codes, scale, minimum = quantize_keys(keys[:, :, :moving], self.bits, self.group_size)
            self.key_codes = torch.cat([self.key_codes, codes], dim=-2)
            self.key_scale = torch.cat([self.key_scale, scale], dim=-2)
            self.key_min = torch.cat([self.key_min, minimum], dim=-2)
        self.keys = keys[:, :, moving:].clone()
        moving = max(0, values.shape[-2] - self.residual)
        if moving:
            codes, scale, minimum = quantize_values(values[:, :, :moving], self.bits, self.group_size)
            self.value_codes = torch.cat([self.value_codes, codes], dim=-2)
            self.value_scale = torch.cat([self.value_scale, scale], dim=-2)
            self.value_min = torch.cat([self.value_min, minimum], dim=-2)
        self.values = values[:, :, moving:].clone()

    def get_seq_length(self) -> int:
        quantized, _ = self.quantized_lengths()
        residual, _ = self.residual_lengths()
        return quantized + residual

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def reset(self) -> None:
        super().reset()
        self._clear_quantized()

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove == 0 or not self.is_initialized:
            return
        raise NotImplementedError("a KIVI layer cannot be cropped: its quantized token groups cannot be split")

    def _tensors(self) -> list[str]:
        return ["keys", "values", *QUANTIZED_PARTS]

    def _apply(self, fn: Any) -> None:
        if not self.is_initialized:
            return
        for name in self._tensors():
            setattr(self, name, fn(getattr(self, name)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._apply(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._apply(lambda t: t[indices, ...])

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._apply(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def offload(self) -> None:
        self._apply(lambda t: t.to("cpu", non_blocking=True))

    def prefetch(self) -> None:
        if self.is_initialized and self.keys.device != self.device:
            self._apply(lambda t: t.to(self.device, non_blocking=True))
