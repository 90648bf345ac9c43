"""Layer-wise budgets from measured sensitivity to eviction (EpiCache's third stage), method-free arithmetic.

A layer is sensitive when its keys move once earlier tokens have been evicted: the sensitivity of layer l is
1 - mean cosine similarity between the keys a full prefill computes for some tokens and the keys a block-wise
evicting prefill computes for the same tokens. The total budget (layers x average) is shared out in proportion to
sensitivity ** alpha (alpha sharpens or flattens the allocation), above a floor, so a layer whose keys never move
(layer 0: its keys depend only on the token embeddings) still keeps some entries.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def key_sensitivity(full_keys: torch.Tensor, evicted_keys: torch.Tensor) -> float:
    """1 - mean cosine similarity over heads and tokens of (batch, kv_heads, tokens, head_dim) key tensors."""
    cosine = torch.nn.functional.cosine_similarity(full_keys.float(), evicted_keys.float(), dim=-1)
    return float(1.0 - cosine.mean())


def allocate(average: int, weights: Sequence[float], floor: int, cap: int) -> list[int]:
    """Per-layer budgets summing to about len(weights) * average: `floor` each, the rest by weight, at most `cap`.

    Uniform when every weight is zero. Rounding hands the leftover entries to the largest remainders.
    """
    layers = len(weights)
    floor = max(1, min(floor, average, cap))
    total = layers * min(average, cap)
    spare = total - layers * floor
    weight_sum = float(sum(weights))
    if spare <= 0 or weight_sum <= 0:
        return [min(average, cap)] * layers
    shares = [spare * w / weight_sum for w in weights]
    budgets = [floor + int(share) for share in shares]
    order = sorted(range(layers), key=lambda i: shares[i] - int(shares[i]), reverse=True)
    for i in order[: total - sum(budgets)]:
        budgets[i] += 1
    return [min(cap, b) for b in budgets]
