"""A cache layer whose KV heads hold different numbers of entries, really stored without padding.

Head-adaptive budgets (Ada-KV, Feng et al., 2024, arXiv:2407.11550) keep more entries in the heads that
concentrate attention and fewer in the others, so after selection each KV head of a layer has its own length.
Until then a `RaggedLayer` is a plain DynamicLayer; `split` stores each head's kept entries as its own
(batch, length, head_dim) tensor, so the bytes held are exactly the entries kept. Attention still needs one dense
tensor: `update` appends the new tokens to every head and returns a transient padded (batch, heads, longest,
head_dim) copy for the attention call only, each head's entries left-aligned; `ragged_mask` builds the per-head
mask that hides the padding and keeps the new tokens causal.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicLayer

from cachebench.kvcompress.prune import gather_tokens


class RaggedLayer(DynamicLayer):
    """Before `split`, a DynamicLayer; after, `head_keys[h]` / `head_values[h]` (batch, length_h, head_dim) per KV
    head and `keys` / `values` None (nothing is stored twice)."""

    is_croppable = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.head_keys: list[torch.Tensor] | None = None
        self.head_values: list[torch.Tensor] | None = None

    @property
    def is_split(self) -> bool:
        return self.head_keys is not None

    def head_lengths(self) -> list[int]:
        """Entries each KV head holds."""
        if self.is_split:
            return [k.shape[1] for k in self.head_keys]
        length = self.get_seq_length()
        return [length] * (self.keys.shape[1] if length else 0)

    def split(self, chosen: list[torch.Tensor]) -> None:
        """Keep, per KV head h, the entries at `chosen[h]` (batch, k_h) indices into the head's current entries."""
        keys, values = self.dense()
        self.head_keys = [_gather(keys[:, h], idx) for h, idx in enumerate(chosen)]
        self.head_values = [_gather(values[:, h], idx) for h, idx in enumerate(chosen)]
        self.keys = self.values = None

    def dense(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, heads, longest, head_dim) keys and values, shorter heads zero-padded at the end (transient)."""
        if not self.is_split:
            return self.keys, self.values
        return _padded(self.head_keys), _padded(self.head_values)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_split:
            return super().update(key_states, value_states, *args, **kwargs)
        self.head_keys = [torch.cat([k, key_states[:, h]], dim=1) for h, k in enumerate(self.head_keys)]
        self.head_values = [torch.cat([v, value_states[:, h]], dim=1) for h, v in enumerate(self.head_values)]
        return self.dense()

    def get_seq_length(self) -> int:
        if self.is_split:
            return max(k.shape[1] for k in self.head_keys)
        return super().get_seq_length()

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def reset(self) -> None:
        super().reset()
        self.head_keys = self.head_values = None

    def crop(self, tokens_to_remove: int) -> None:
        if self.is_split:
            raise NotImplementedError("a layer with per-head lengths cannot be cropped")
        super().crop(tokens_to_remove)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if not self.is_split:
            super().batch_select_indices(indices)
            return
        self.head_keys = [k[indices] for k in self.head_keys]
        self.head_values = [v[indices] for v in self.head_values]

    def batch_repeat_interleave(self, repeats: int) -> None:
        if not self.is_split:
            super().batch_repeat_interleave(repeats)
            return
        self.head_keys = [k.repeat_interleave(repeats, dim=0) for k in self.head_keys]
        self.head_values = [v.repeat_interleave(repeats, dim=0) for v in self.head_values]

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx)


def ragged_mask(lengths: list[int], q_heads: int, new: int, device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive mask (1, q_heads, new, longest + new) for heads that held `lengths` entries (one per KV head) before
    `new` tokens were appended to each: a head sees its own entries and the new tokens causally, padding is -inf."""
    kv_heads = len(lengths)
    held = torch.tensor(lengths).repeat_interleave(q_heads // kv_heads).view(q_heads, 1, 1)
    width = max(lengths) + new
    rows = torch.arange(new).view(1, new, 1)
    cols = torch.arange(width).view(1, 1, width)
    mask = torch.zeros(q_heads, new, width)
    mask.masked_fill_(cols > held + rows, float("-inf"))
    return mask.unsqueeze(0).to(device=device, dtype=dtype)


def _gather(head: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """(batch, L, d) at (batch, k) indices -> a new contiguous (batch, k, d)."""
    return gather_tokens(head.unsqueeze(1), indices.unsqueeze(1)).squeeze(1)


def _padded(heads: list[torch.Tensor]) -> torch.Tensor:
    longest = max(h.shape[1] for h in heads)
    batch, _, dim = heads[0].shape
    dense = heads[0].new_zeros(batch, len(heads), longest, dim)
    for i, h in enumerate(heads):
        dense[:, i, : h.shape[1]] = h
    return dense


def head_adaptive_keep(ranked: torch.Tensor, keep: int, floor: int) -> list[torch.Tensor]:
    """Ada-KV's allocation: the layer keeps heads x `keep` entries in all, chosen as the top of every head's scores
    pooled together, each head first guaranteed its own top `floor` (the safeguard against starving a head).
    `ranked` (1, heads, L) are scores with protected entries already ranked highest (-inf marks padding). Returns,
    per KV head, the ascending indices (1, k_h) it keeps; the k_h sum to heads x keep (fewer if fewer are held)."""
    if ranked.shape[0] != 1:
        raise ValueError("head-adaptive budgets keep a different number of entries per head: batch size 1 only")
    heads, length = ranked.shape[1], ranked.shape[2]
    floor = max(0, min(floor, keep, length))
    boosted = ranked.float().clone()
    finite = boosted[torch.isfinite(boosted)]
    lift = (finite.max() - finite.min() + 1) if finite.numel() else boosted.new_ones(())
    if floor:
        guaranteed = torch.topk(boosted, floor, dim=-1).indices
        boosted.scatter_(-1, guaranteed, boosted.gather(-1, guaranteed) + lift)
    available = int(torch.isfinite(boosted).sum())
    total = min(heads * keep, available)
    flat = torch.topk(boosted.flatten(), total).indices
    head_of, index_of = flat // length, flat % length
    return [index_of[head_of == h].sort().values.unsqueeze(0) for h in range(heads)]
