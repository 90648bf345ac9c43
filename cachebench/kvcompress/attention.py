"""Attention of a few queries onto a layer's cached keys, GQA-aware, without an L x L matrix."""

from __future__ import annotations

import math

import torch


def repeat_kv(keys: torch.Tensor, q_heads: int) -> torch.Tensor:
    """(batch, kv_heads, L, d) -> (batch, q_heads, L, d): each KV head repeated for the query heads it serves."""
    kv_heads = keys.shape[1]
    if kv_heads == q_heads:
        return keys
    return keys.repeat_interleave(q_heads // kv_heads, dim=1)


def group_reduce(per_query_head: torch.Tensor, kv_heads: int, how: str = "mean") -> torch.Tensor:
    """(batch, q_heads, ...) -> (batch, kv_heads, ...): combine the query heads that share one KV head."""
    batch, q_heads = per_query_head.shape[:2]
    grouped = per_query_head.reshape(batch, kv_heads, q_heads // kv_heads, *per_query_head.shape[2:])
    return grouped.mean(dim=2) if how == "mean" else grouped.sum(dim=2)


def window_attention(queries: torch.Tensor, keys: torch.Tensor, scaling: float | None = None) -> torch.Tensor:
    """Softmax attention (float32) of window queries onto keys: (batch, q_heads, w, L).

    The w queries are the tokens at the last w cache indices, so query i sees keys up to index L - w + i.
    """
    w, length = queries.shape[2], keys.shape[2]
    scale = scaling if scaling is not None else 1.0 / math.sqrt(queries.shape[-1])
    logits = torch.matmul(queries.float(), repeat_kv(keys, queries.shape[1]).float().transpose(-1, -2)) * scale
    rows = torch.arange(w, device=keys.device).unsqueeze(1) + (length - w)
    future = torch.arange(length, device=keys.device).unsqueeze(0) > rows
    logits.masked_fill_(future, float("-inf"))
    return torch.softmax(logits, dim=-1)


def accumulated_attention(queries: torch.Tensor, keys: torch.Tensor, scaling: float | None = None,
                          max_elements: int = 1 << 24) -> torch.Tensor:
    """Column sums of the causal attention of all n queries (the last n cache indices) onto the keys:
    (batch, q_heads, L). Computed in query chunks so memory stays at max_elements, never L x L."""
    n, q_heads = queries.shape[2], queries.shape[1]
    length = keys.shape[2]
    chunk = max(1, max_elements // max(1, q_heads * length))
    total = torch.zeros(queries.shape[0], q_heads, length, dtype=torch.float32, device=keys.device)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        visible = length - n + stop  # keys the chunk's last query may see
        probs = window_attention(queries[:, :, start:stop], keys[:, :, :visible], scaling)
        total[..., :visible] += probs.sum(dim=2)
    return total
