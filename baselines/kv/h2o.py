"""`h2o`: heavy hitters plus recent tokens, kept as the model generates (Zhang et al., 2023, "H2O: Heavy-Hitter
Oracle for Efficient Generative Inference of Large Language Models", arXiv:2306.14048).

Every entry carries the attention it has accumulated from all queries so far (per KV head; the query heads of a
GQA group are summed): the schedule's `accumulates_attention` piece. A prefill is compressed to the budget — half
recent tokens, half the highest accumulated scores — and then each decoding step adds its attention and evicts the
lowest-scored entry outside the recent window (the `evicts_while_decoding` piece), so the cache never grows past
the size it had after the prompt. Prefill scores are column sums of the causal attention computed in query chunks,
never as one L x L matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cachebench.engine.session import LayerCall
from cachebench.kvcompress.budget import BudgetParams
from cachebench.kvcompress.evictor import EvictionMethod, accumulated_attention_of, protect
from cachebench.kvcompress.prune import top_k_sorted
from cachebench.params import param


@dataclass(frozen=True)
class H2OParams(BudgetParams):
    recent: float = param(0.5, "fraction of the budget given to the most recent tokens (the rest: heavy hitters)",
                          low=0.0, high=1.0)


def h2o_keep(scores: torch.Tensor, keep: int, recent: int) -> torch.Tensor:
    """Indices (batch, heads, keep): the last `recent` entries and the top accumulated scores among the others
    (what EvictionMethod.select does with H2O.score)."""
    return top_k_sorted(protect(scores, 0, min(recent, keep)), keep)


class H2O(EvictionMethod):
    name = "h2o"
    summary = ("Heavy hitters by accumulated attention plus recent tokens, evicting while decoding too "
               "(Zhang et al., 2023).")
    Params = H2OParams
    uses_queries = False
    accumulates_attention = True
    evicts_while_decoding = True

    def score(self, call: LayerCall, keys: torch.Tensor, queries: torch.Tensor | None) -> torch.Tensor:
        return accumulated_attention_of(call)[..., : keys.shape[2]]

    def recent_for(self, call: LayerCall, keep: int, queries: torch.Tensor | None) -> int:
        """The recent share of the layer's fixed budget (not of a larger decode-time limit)."""
        return round(self.target_for(call, keep) * self.params.recent)
