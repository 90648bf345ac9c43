"""Selecting and keeping tokens in a cache layer: the memory really shrinks (new, smaller tensors)."""

from __future__ import annotations

import torch


def top_k_sorted(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k highest scores along the last dim, in ascending index order (cache order is kept)."""
    k = max(0, min(k, scores.shape[-1]))
    return torch.topk(scores, k, dim=-1).indices.sort(dim=-1).values


def with_tail(indices: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Selected indices (batch, heads, k) followed by every index in [start, stop) for each head."""
    if stop <= start:
        return indices
    tail = torch.arange(start, stop, device=indices.device).expand(*indices.shape[:2], stop - start)
    return torch.cat([indices, tail], dim=-1)


def gather_tokens(tensor: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """(batch, heads, L, d) -> (batch, heads, k, d) at per-head indices (batch, heads, k); a new contiguous tensor."""
    return tensor.gather(2, indices.unsqueeze(-1).expand(-1, -1, -1, tensor.shape[-1])).contiguous()


def keep_in_layer(layer, indices: torch.Tensor) -> None:
    """Replace a cache layer's keys and values by the entries at `indices` (the old tensors are freed)."""
    layer.keys = gather_tokens(layer.keys, indices)
    layer.values = gather_tokens(layer.values, indices)


def keep_top_and_window(prefix_scores: torch.Tensor, length: int, keep: int) -> torch.Tensor:
    """Top (keep - w) prefix entries per head plus the w window entries; when keep < w, the newest keep entries."""
    w = length - prefix_scores.shape[-1]
    ranks = torch.arange(w, device=prefix_scores.device, dtype=prefix_scores.dtype)
    above = (prefix_scores.max() if prefix_scores.numel() else prefix_scores.new_zeros(())) + 1
    window_scores = (above + ranks).expand(*prefix_scores.shape[:2], w)
    return top_k_sorted(torch.cat([prefix_scores, window_scores], dim=-1), keep)
