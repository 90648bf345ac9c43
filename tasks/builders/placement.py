"""Shared helpers for synthetic contexts: spreading needles over depths and filling to a token budget."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence


def spread_depths(count: int, rng: random.Random) -> list[float]:
    """One depth in [0, 1) per needle: evenly spaced strata with jitter, so every episode covers the document."""
    return [(slot + rng.uniform(0.1, 0.9)) / count for slot in range(count)]


def depth_bucket(depth: float, buckets: int = 4) -> str:
    """Category label for a needle's depth, e.g. "depth-25" for the second quarter of the context."""
    index = min(int(depth * buckets), buckets - 1)
    return f"depth-{index * 100 // buckets:02d}"


def interleave(
    filler: Sequence[str], needles: Sequence[str], depths: Sequence[float], separator: str = " "
) -> str:
    """Place each needle into the filler sequence at its depth (fraction of the filler items before it)."""
    slots = sorted(zip(depths, range(len(needles)), strict=True))
    pieces: list[str] = []
    cursor = 0
    for depth, needle_index in slots:
        cut = round(depth * len(filler))
        pieces.extend(filler[cursor:cut])
        pieces.append(needles[needle_index])
        cursor = cut
    pieces.extend(filler[cursor:])
    return separator.join(pieces)


def unit_tokens(unit: str, count_tokens: Callable[[str], int], separator: str = " ") -> float:
    """Tokens one filler unit adds inside a run of them (a unit alone tokenizes its edges differently)."""
    sample = 16
    return count_tokens(separator.join([unit] * sample)) / sample


def fill_count(target_tokens: int, fixed_tokens: int, unit: float) -> int:
    """How many filler units bring the context to the target, after the needles' own tokens."""
    return max(0, round((target_tokens - fixed_tokens) / max(unit, 1e-9)))


def generate_until(
    target_tokens: int, make_item: Callable[[], str], count_tokens: Callable[[str], int], separator: str = "\n"
) -> list[str]:
    """Items from `make_item`, joined by `separator`, until they reach the target token count (at least one)."""
    items: list[str] = []
    total = 0
    while not items or total < target_tokens:
        item = make_item()
        total += count_tokens(item if not items else separator + item)
        items.append(item)
    return items
