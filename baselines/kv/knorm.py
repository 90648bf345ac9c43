"""`knorm`: keep the keys with the lowest L2 norm (Devoto et al., 2024, "A Simple and Effective L2 Norm-Based
Strategy for KV Cache Compression", arXiv:2406.11430).

The paper finds that a key's L2 norm predicts the attention it will receive, inversely: low-norm keys draw the most
attention during decoding. So each entry scores minus its key's norm and the top of each KV head is kept, with
its value. No queries are read, so the rule needs no attention weights (the point of the paper: it works with
FlashAttention). As kvpress's KnormPress reads it, every layer is compressed and no window or sink is protected
(the newest tokens compete like the rest); the suite's schedule supplies when a layer is compressed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cachebench.engine.session import LayerCall
from cachebench.kvcompress.budget import BudgetParams
from cachebench.kvcompress.evictor import EvictionMethod


@dataclass(frozen=True)
class KnormParams(BudgetParams):
    """Only a budget: the rule has no knob."""


def knorm_scores(keys: torch.Tensor) -> torch.Tensor:
    """(batch, kv_heads, L): minus each key's L2 norm, so the lowest norms rank highest."""
    return -keys.float().norm(dim=-1)


class Knorm(EvictionMethod):
    name = "knorm"
    summary = "Keep the keys with the lowest L2 norm, no attention needed (Devoto et al., 2024)."
    Params = KnormParams
    uses_queries = False

    def score(self, call: LayerCall, keys: torch.Tensor, queries: torch.Tensor | None) -> torch.Tensor:
        return knorm_scores(keys)
