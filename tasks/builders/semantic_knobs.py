"""Reading a semantic builder's YAML args: defaults, per-category maps, and one-line errors for bad values.

A task YAML is written by hand, so a misspelt knob or a share of -0.2 must stop the run with a line that names
the knob, not fall back to a default without a word.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from cachebench.errors import UsageError

MAX_REQUESTS = 10_000_000  # --requests: a generated stream is built whole, in memory, before it runs


def check_known(args: Mapping[str, Any], known: Iterable[str], owner: str) -> None:
    """Every key of `args` is a knob of `owner`."""
    known = sorted(known)
    unknown = sorted(set(args) - set(known))
    if unknown:
        raise UsageError(f"{owner} args: unknown knob {unknown[0]!r} (known: {', '.join(known)})")


def number(args: Mapping[str, Any], key: str, default: float, owner: str, *, low: float | None = None,
           high: float | None = None, strict_low: bool = False, integer: bool = False, name: str = "") -> float:
    """args[key] as a finite number within [low, high] (low excluded when strict_low); `name` is what messages
    call it (default: key)."""
    value = args.get(key, default)
    key = name or key
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UsageError(f"{owner} args: {key} must be a number, got {value!r}")
    if integer and value != int(value):
        raise UsageError(f"{owner} args: {key} must be a whole number, got {value!r}")
    if low is not None and (value < low or (strict_low and value == low)):
        raise UsageError(f"{owner} args: {key} must be {'>' if strict_low else '>='} {low}, got {value!r}")
    if high is not None and value > high:
        raise UsageError(f"{owner} args: {key} must be <= {high}, got {value!r}")
    return int(value) if integer else float(value)


def per_category(args: Mapping[str, Any], key: str, defaults: Mapping[str, float], categories: Iterable[str],
                 owner: str, *, replace: bool = False, low: float = 0.0) -> dict[str, float]:
    """A {category: number} knob: the given entries override the defaults (or replace them all when `replace`)."""
    given = args.get(key)
    if given is None:
        return dict(defaults)
    if not isinstance(given, Mapping):
        raise UsageError(f"{owner} args: {key} must map categories to numbers, got {given!r}")
    categories = tuple(categories)
    for name in given:
        if name not in categories:
            raise UsageError(f"{owner} args: {key} names unknown category {name!r} (known: {', '.join(categories)})")
    out = {name: 0.0 for name in categories} if replace else dict(defaults)
    for name in given:
        out[name] = number(given, name, 0.0, owner, low=low, name=f"{key}.{name}")
    return out


def count_limit(args: Mapping[str, Any], key: str, default: int, owner: str, limit: int | None) -> int | None:
    """How many items to keep: the knob (0 = all) lowered by --limit; None when nothing caps it."""
    wanted = int(number(args, key, default, owner, low=0, integer=True)) or None
    caps = [value for value in (wanted, limit) if value is not None]
    return max(0, min(caps)) if caps else None


def requested(override: int | None, args: Mapping[str, Any], key: str, default: int, owner: str) -> int:
    """How many requests (pairs) a generated task makes: --requests when given, else the `key` knob."""
    if override is None:
        return int(number(args, key, default, owner, low=1, high=MAX_REQUESTS, integer=True))
    if isinstance(override, bool) or not isinstance(override, int) or not 1 <= override <= MAX_REQUESTS:
        raise UsageError(f"--requests must be between 1 and {MAX_REQUESTS:,}, got {override!r}")
    return override

