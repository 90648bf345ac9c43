"""Merging cache entries along the sequence under a budget: the pieces KVMerger and Chelsea share.

A merging method does not drop entries; it replaces groups of them by one entry each. Both methods here describe
what they do to one KV head's candidate entries as a *plan*: for every candidate, the output slot it goes into
(-1: dropped) and its weight inside that slot (a slot's weights sum to 1). `merge_entries` carries a plan out on
keys and values, so the merged tensors are computed in one place, in float32, and a slot holding a single entry
with weight 1 is that entry copied bit-exact. `merge_layer` applies one plan per KV head to a layer's first
entries, leaving the newest `recent` of them and everything after them (a new prompt) untouched, and writes new,
smaller tensors to the layer, so the bytes held really fall.

Keys are merged as the cache stores them, after RoPE: that is the space in which both papers (Wang et al., 2024,
arXiv:2407.08454; Hu et al., 2025, arXiv:2506.11418) measure key similarity and average cached states. A merged
key is then a blend of rotations at neighbouring positions, which is why both merge tokens that are close in the
sequence (KVMerger: adjacent runs; Chelsea: within a chunk).

An entry that stands for several tokens can carry its size (`SizedLayer`): Chelsea's centroids keep the count of
tokens they average, so a later merge weighs them by it and attention can count them that many times
(`size_bias_mask`, ToMe's proportional attention: Bolya et al., 2023, arXiv:2210.09461).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicLayer

Plan = tuple[torch.Tensor, torch.Tensor]  # (owner (n,) long, slot of each candidate or -1; weight (n,) float32)


def adjacent_similarity(keys: torch.Tensor) -> torch.Tensor:
    """Cosine similarity (float32) of each key with the next one: (n - 1,) for keys (n, d)."""
    unit = F.normalize(keys.float(), dim=-1)
    return (unit[:-1] * unit[1:]).sum(dim=-1)


def merge_entries(keys: torch.Tensor, values: torch.Tensor, owner: torch.Tensor, weight: torch.Tensor,
                  slots: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Carry out a plan on one head: slot j holds sum_i weight_i * entry_i over the candidates with owner_i = j.

    keys, values (n, d); owner (n,) in [-1, slots) (every slot owned by at least one candidate); weight (n,) with
    each slot's weights summing to 1. Returns (slots, d) tensors in the input dtype. A slot owned by one candidate
    of weight 1 is that candidate's entry, unchanged to the bit (no float round trip)."""
    kept = owner >= 0
    index, w = owner[kept], weight[kept].float()
    merged_keys = keys.new_zeros(slots, keys.shape[-1], dtype=torch.float32)
    merged_values = values.new_zeros(slots, values.shape[-1], dtype=torch.float32)
    merged_keys.index_add_(0, index, keys[kept].float() * w.unsqueeze(-1))
    merged_values.index_add_(0, index, values[kept].float() * w.unsqueeze(-1))
    merged_keys, merged_values = merged_keys.to(keys.dtype), merged_values.to(values.dtype)
    members = torch.zeros(slots, dtype=torch.long, device=keys.device).index_add_(0, index, torch.ones_like(index))
    single = kept.clone()
    single[kept] = (members[index] == 1) & (w == 1.0)
    merged_keys[owner[single]] = keys[single]
    merged_values[owner[single]] = values[single]
    return merged_keys, merged_values


def slot_sizes(sizes: torch.Tensor, owner: torch.Tensor, slots: int) -> torch.Tensor:
    """Tokens each slot stands for: the sizes (n,) of the candidates it merged, summed (saturating at the largest
    value of the sizes' dtype)."""
    kept = owner >= 0
    total = torch.zeros(slots, dtype=torch.long, device=sizes.device).index_add_(0, owner[kept], sizes[kept].long())
    limit = torch.iinfo(sizes.dtype).max if not sizes.dtype.is_floating_point else None
    return (total.clamp(max=limit) if limit is not None else total).to(sizes.dtype)


def merge_layer(layer: Any, start: int, stop: int, plans: list[list[Plan]], slots: int) -> None:
    """Replace the layer's entries [start, stop) of every (batch, KV head) by `slots` merged ones, following
    `plans[b][h]` (candidate i is entry start + i); the entries before `start` (protected sinks) and from `stop` on
    (the protected window, then any new prompt) stay as they are. A `SizedLayer` gets its sizes merged along."""
    keys, values = layer.keys, layer.values
    sizes = getattr(layer, "sizes", None)
    new_keys, new_values, new_sizes = [], [], []
    for b, head_plans in enumerate(plans):
        row_keys, row_values, row_sizes = [], [], []
        for h, (owner, weight) in enumerate(head_plans):
            k, v = merge_entries(keys[b, h, start:stop], values[b, h, start:stop], owner, weight, slots)
            row_keys.append(k)
            row_values.append(v)
            if sizes is not None:
                row_sizes.append(slot_sizes(sizes[b, h, start:stop], owner, slots))
        new_keys.append(torch.stack(row_keys))
        new_values.append(torch.stack(row_values))
        if sizes is not None:
            new_sizes.append(torch.stack(row_sizes))
    layer.keys = torch.cat([keys[:, :, :start], torch.stack(new_keys), keys[:, :, stop:]], dim=2).contiguous()
    layer.values = torch.cat([values[:, :, :start], torch.stack(new_values), values[:, :, stop:]], dim=2).contiguous()
    if sizes is not None:
        layer.sizes = torch.cat([sizes[:, :, :start], torch.stack(new_sizes), sizes[:, :, stop:]], dim=2).contiguous()


class SizedLayer(DynamicLayer):
    """A DynamicLayer whose entries each stand for `sizes[b, h, i]` tokens (batch x heads x entries, held only once
    something was merged: None means every entry is one token). New tokens count 1. The sizes are int16, 2 bytes
    per entry and head beside the 2 x head_dim x 2 of a bf16 key and value (0.8% at head_dim 64); a centroid of
    more than 32,767 tokens is counted as 32,767."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sizes: torch.Tensor | None = None

    def ensure_sizes(self) -> torch.Tensor:
        """The sizes, created as all ones the first time a merge needs them."""
        if self.sizes is None:
            self.sizes = torch.ones(self.keys.shape[:3], dtype=torch.int16, device=self.keys.device)
        return self.sizes

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
        out = super().update(key_states, value_states, *args, **kwargs)
        if self.sizes is not None:
            ones = torch.ones(key_states.shape[:3], dtype=self.sizes.dtype, device=self.sizes.device)
            self.sizes = torch.cat([self.sizes, ones], dim=2)
        return out

    def reset(self) -> None:
        super().reset()
        self.sizes = None

    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)
        if self.sizes is not None and tokens_to_remove:
            self.sizes = self.sizes[..., : -abs(tokens_to_remove)]

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        if self.sizes is not None:
            self.sizes = self.sizes.repeat_interleave(repeats, dim=0)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        if self.sizes is not None:
            self.sizes = self.sizes[indices]

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx)


def size_bias_mask(sizes: torch.Tensor, q_heads: int, new: int, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive mask (batch, q_heads, new, held + new) for `new` tokens appended to a layer whose held entries have
    `sizes` (batch, kv_heads, held): causal over the new tokens, and + log(size) on each held entry, so an entry
    standing for s tokens weighs in the softmax as s copies of itself would."""
    batch, kv_heads, held = sizes.shape
    bias = torch.log(sizes.float()).repeat_interleave(q_heads // kv_heads, dim=1)  # (batch, q_heads, held)
    mask = torch.zeros(batch, q_heads, new, held + new)
    mask[..., :held] = bias.cpu().unsqueeze(2)
    future = torch.arange(new).view(new, 1) < torch.arange(new).view(1, new)
    mask[..., held:].masked_fill_(future, -math.inf)
    return mask.to(device=device, dtype=dtype)
