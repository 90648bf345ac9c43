"""Sharing a total budget among layers, method-free arithmetic: by measured sensitivity to eviction (EpiCache's
third stage, `allocate`) or by preference with per-layer caps (CAKE's cascade, `allocate_budgets`).

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


def allocate_budgets(prefs: list[float], total: int, caps: list[int]) -> list[int]:
    """Slice `total` among layers in proportion to `prefs`, no layer above its cap (the excess of capped layers
    goes to the others, again by preference); largest-remainder rounding, so the shares sum to min(total, sum caps).
    Equal weights when every preference is zero."""
    n = len(prefs)
    alloc = [0.0] * n
    free = list(range(n))
    remaining = float(min(total, sum(caps)))
    while free:
        weights = [max(prefs[i], 0.0) for i in free]
        if sum(weights) <= 0.0:
            weights = [1.0] * len(free)
        norm = sum(weights)
        shares = {i: remaining * w / norm for i, w in zip(free, weights, strict=True)}
        capped = [i for i in free if shares[i] >= caps[i]]
        if not capped:
            for i in free:
                alloc[i] = shares[i]
            break
        for i in capped:
            alloc[i] = float(caps[i])
            remaining -= caps[i]
        free = [i for i in free if i not in capped]
    budgets = [int(a) for a in alloc]
    left = min(total, sum(caps)) - sum(budgets)
    order = sorted((i for i in range(n) if budgets[i] < caps[i]), key=lambda i: (-(alloc[i] - budgets[i]), i))
    for i in order[:left]:
        budgets[i] += 1
    return budgets
