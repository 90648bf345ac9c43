"""Key-channel pruning: a cache layer that really stores fewer key channels per KV head, and the query-driven rule
that picks them (ThinK: Xu et al., 2024, "ThinK: Thinner Key Cache by Query-Driven Pruning", arXiv:2407.21018).

ThinK picks, per layer and KV head, the key channels that carry the window queries' attention logits: the
logits Q K^T are a sum over channels j of rank-one matrices Q[:, j] K[:, j]^T, so a channel's importance is the
Frobenius norm of its own term, ||Q[:, j] K[:, j]^T||_F = ||Q[:, j]||_2 * ||K[:, j]||_2 (norms over tokens: the
window's queries for Q, every held entry for K). The paper scores per attention head; a cache shared by the query
heads of a GQA group needs one choice per KV head, so the group's window queries are stacked (the Frobenius norm of
the group's logits term), which ranks channels as kvpress's ThinKPress does (mean of squared query norms over the
group). The ⌊(1 − λ)·d⌋ highest-scored channels are kept.

`ChannelPrunedLayer` holds the entries of a layer in two parts: the oldest entries "thin", keys (batch, kv_heads,
L_thin, d_kept) with the kept channel indices (batch, kv_heads, d_kept) of each head, and the newest entries
"wide", keys (batch, kv_heads, L_wide, d) not pruned yet (as the authors keep the most recent tokens and every token
decoded after the pruning whole); values are never pruned. Attention and the eviction schedule read `keys`: a
transient dense (batch, kv_heads, L, d) view, zeros in the pruned channels, which gives the same logits as the query
restricted to the kept channels times the thin keys. Only the thin keys, the indices, the wide keys and the values
are attributes, so counting the layer's tensors counts exactly what is stored.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers.cache_utils import DynamicLayer


def channels_kept(head_dim: int, ratio: float) -> int:
    """Key channels a head keeps when the fraction `ratio` (ThinK's λ) is pruned: ⌊(1 − λ)·d⌋, computed exactly (in
    floating point 64·(1 − 0.4) is 38.4 but 10·(1 − 0.9) is 0.999…, which would keep none)."""
    return math.floor(head_dim * (1.0 - ratio) + 1e-9)


def channel_scores(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """ThinK's importance of each key channel, (batch, kv_heads, d): ||Q_g[:, j]||_2 · ||K[:, j]||_2, with Q_g the
    window queries (batch, q_heads, w, d) of the query heads sharing the KV head stacked over their tokens, and K
    the KV head's keys (batch, kv_heads, L, d). Float32, whatever the cache's dtype."""
    batch, q_heads, _, dim = queries.shape
    kv_heads = keys.shape[1]
    per_query_head = queries.float().pow(2).sum(dim=2)  # (batch, q_heads, d): squared norms over the window
    grouped = per_query_head.reshape(batch, kv_heads, q_heads // kv_heads, dim).sum(dim=2)
    return grouped.sqrt() * keys.float().pow(2).sum(dim=2).sqrt()


def keep_channels(queries: torch.Tensor, keys: torch.Tensor, kept: int) -> torch.Tensor:
    """Indices (batch, kv_heads, kept), ascending, of the `kept` highest-scored channels of each KV head."""
    scores = channel_scores(queries, keys)
    kept = max(1, min(kept, scores.shape[-1]))
    return torch.topk(scores, kept, dim=-1).indices.sort(dim=-1).values


def thin(keys: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
    """(batch, heads, L, d) keys -> (batch, heads, L, d_kept): each head's kept channels, a new contiguous tensor."""
    index = channels.unsqueeze(2).expand(-1, -1, keys.shape[2], -1)
    return keys.gather(-1, index).contiguous()


def widen(thin_keys: torch.Tensor, channels: torch.Tensor, head_dim: int) -> torch.Tensor:
    """(batch, heads, L, d_kept) -> (batch, heads, L, head_dim), zeros in the pruned channels (transient)."""
    dense = thin_keys.new_zeros(*thin_keys.shape[:3], head_dim)
    return dense.scatter_(-1, channels.unsqueeze(2).expand(-1, -1, thin_keys.shape[2], -1), thin_keys)


class ChannelPrunedLayer(DynamicLayer):
    """A DynamicLayer whose oldest entries keep only some key channels per head (`prune`); the newest stay whole.

    `keys` is a property: reading it builds the dense view; assigning it (the eviction schedule gathers the kept
    entries and assigns them) stores the entries whole, so the owner prunes again afterwards (`prune`, with the same
    channels: a row that was already thin is zero outside them and loses nothing)."""

    is_croppable = False

    def __init__(self, **kwargs: Any) -> None:
        self.thin_keys: torch.Tensor | None = None  # (batch, kv_heads, L_thin, d_kept): the pruned entries
        self.channels: torch.Tensor | None = None  # (batch, kv_heads, d_kept) int64: each head's kept channels
        self.wide_keys: torch.Tensor | None = None  # (batch, kv_heads, L_wide, d): the entries not pruned (yet)
        super().__init__(**kwargs)

    @property
    def keys(self) -> torch.Tensor | None:
        if self.thin_keys is None or self.thin_keys.shape[2] == 0:
            return self.wide_keys
        dense = widen(self.thin_keys, self.channels, self.wide_keys.shape[-1])
        return torch.cat([dense, self.wide_keys], dim=2)

    @keys.setter
    def keys(self, value: torch.Tensor | None) -> None:
        self.wide_keys = value
        self.thin_keys = None  # the channel choice stays: it is the layer's, made once

    @property
    def thin_length(self) -> int:
        """Entries stored with pruned keys (the oldest ones)."""
        return 0 if self.thin_keys is None else int(self.thin_keys.shape[2])

    def choose_channels(self, channels: torch.Tensor) -> None:
        """Fix the layer's kept channels (batch, kv_heads, d_kept) for every later `prune`."""
        self.channels = channels.to(device=self.wide_keys.device, dtype=torch.long)

    def prune(self, count: int) -> None:
        """Store the oldest `count` entries with the chosen channels only (entries already thin stay so)."""
        if self.channels is None:
            raise RuntimeError("choose_channels before prune")
        count = min(count, self.get_seq_length())
        if count <= self.thin_length:
            return
        more = count - self.thin_length
        pruned = thin(self.wide_keys[:, :, :more], self.channels)
        self.thin_keys = pruned if self.thin_keys is None else torch.cat([self.thin_keys, pruned], dim=2)
        self.wide_keys = self.wide_keys[:, :, more:].contiguous()

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new entries whole; return the dense keys and the values for the attention call."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.wide_keys = torch.cat([self.wide_keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        return self.keys, self.values

    def get_seq_length(self) -> int:
        if not self.is_initialized or self.wide_keys is None or self.wide_keys.dim() != 4:
            return self.thin_length
        return self.thin_length + int(self.wide_keys.shape[2])

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def reset(self) -> None:
        super().reset()
        self.thin_keys = self.channels = None

    def crop(self, tokens_to_remove: int) -> None:
        if self.thin_length:
            raise NotImplementedError("a layer with pruned key channels cannot be cropped")
        super().crop(tokens_to_remove)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.channels is not None:
            self.channels = self.channels[indices]
        if self.thin_keys is not None:
            self.thin_keys = self.thin_keys[indices]
        if self.get_seq_length() > 0:
            self.wide_keys, self.values = self.wide_keys[indices], self.values[indices]

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.channels is not None:
            self.channels = self.channels.repeat_interleave(repeats, dim=0)
        if self.thin_keys is not None:
            self.thin_keys = self.thin_keys.repeat_interleave(repeats, dim=0)
        if self.get_seq_length() > 0:
            self.wide_keys = self.wide_keys.repeat_interleave(repeats, dim=0)
            self.values = self.values.repeat_interleave(repeats, dim=0)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx)
