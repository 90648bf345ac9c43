"""A compression budget: a ratio (fraction of the cache removed) or an absolute number of kept tokens."""

from __future__ import annotations

import math
from dataclasses import dataclass

from cachebench.params import MAX_TOKENS, param

DEFAULT_RATIO = 0.5


@dataclass(frozen=True)
class BudgetParams:
    """Parameters every budgeted method shares. Exactly one of ratio/budget is set after construction, so the
    row's method_params records which kind of budget the run used."""

    ratio: float | None = param(None, f"fraction of the cache removed ({DEFAULT_RATIO} unless budget is set)",
                                low=0.0, high=0.99)
    budget: int | None = param(None, "absolute number of tokens kept per layer and head, instead of a ratio", low=1,
                               high=MAX_TOKENS)

    def __post_init__(self) -> None:
        if self.ratio is not None and self.budget is not None:
            raise ValueError("give ratio or budget, not both")
        if self.ratio is None and self.budget is None:
            object.__setattr__(self, "ratio", DEFAULT_RATIO)

    def kept(self, tokens: int) -> int:
        """Tokens to keep out of `tokens` (at least one): n·(1−ratio) truncated, as the SnapKV authors' code and
        kvpress size a budget, computed exactly (in floating point 100·(1−0.9) is 9.999…, which would keep 9)."""
        if self.budget is not None:
            return max(1, min(tokens, self.budget))
        return max(1, math.floor(tokens * (1.0 - self.ratio) + 1e-9))
