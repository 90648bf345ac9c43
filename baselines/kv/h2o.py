"""`h2o`: heavy hitters plus recent tokens, kept as the model generates (Zhang et al., 2023, "H2O: Heavy-Hitter
Oracle for Efficient Generative Inference of Large Language Models", arXiv:2306.14048).

Every entry carries the attention it has accumulated from all queries so far (per KV head; the query heads of a
GQA group are summed). A prefill is compressed to the budget — half recent tokens, half the highest accumulated
scores — and then each decoding step adds its attention and evicts the lowest-scored entry outside the recent
window, so the cache never grows past the size it had after the prompt. Prefill scores are column sums of the
causal attention computed in query chunks, never as one L x L matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cachebench.kvcompress.attention import accumulated_attention, group_reduce
from cachebench.kvcompress.budget import BudgetParams
from cachebench.kvcompress.evictor import EvictionMethod, eviction_state
from cachebench.kvcompress.prune import keep_in_layer, top_k_sorted, with_tail
from cachebench.kvcompress.queries import project_queries
from cachebench.method import LayerCall
from cachebench.params import param


@dataclass(frozen=True)
class H2OParams(BudgetParams):
    recent: float = param(0.5, "fraction of the budget given to the most recent tokens (the rest: heavy hitters)",
                          low=0.0, high=1.0)


def h2o_keep(scores: torch.Tensor, keep: int, recent: int) -> torch.Tensor:
    """Indices (batch, heads, keep): the last `recent` entries and the top accumulated scores among the others."""
    length = scores.shape[-1]
    recent = min(recent, keep)
    heavy = top_k_sorted(scores[..., : length - recent], keep - recent)
    return with_tail(heavy, length - recent, length)


class H2O(EvictionMethod):
    name = "h2o"
    summary = ("Heavy hitters by accumulated attention plus recent tokens, evicting while decoding too "
               "(Zhang et al., 2023).")
    Params = H2OParams
    fixed_cache_while_decoding = False  # evicts at every decode step

    def _recent(self, keep: int) -> int:
        return round(keep * self.params.recent)

    def _contribution(self, call: LayerCall, keys: torch.Tensor) -> torch.Tensor:
        """Attention the forward's new queries paid to every entry, summed over each KV head's query heads."""
        cos, sin = call.position_embeddings
        queries = project_queries(call.module, call.hidden_states, cos, sin)
        summed = accumulated_attention(queries, keys, getattr(call.module, "scaling", None))
        return group_reduce(summed, keys.shape[1], "sum")

    def on_layer(self, call: LayerCall) -> None:
        layer = call.cache.layers[call.layer_idx]
        total = layer.keys.shape[-2]
        before = total - call.hidden_states.shape[1]
        held = getattr(layer, "h2o_scores", None)
        if held is None or held.shape[-1] != before:  # first forward of this cache
            held = torch.zeros(*layer.keys.shape[:2], before, dtype=torch.float32, device=layer.keys.device)
        added = self._contribution(call, layer.keys)
        state = eviction_state(call)
        limits = state.setdefault("h2o_limit", {})
        if call.phase == "decode":
            scores = torch.cat([held, torch.zeros_like(added[..., before:])], dim=-1) + added
            limit = limits.get(call.layer_idx, total)
            if total > limit:
                chosen = h2o_keep(scores, limit, self._recent(self.target_for(call, limit)))
                keep_in_layer(layer, chosen)
                scores = scores.gather(-1, chosen)
            layer.h2o_scores = scores
            return
        scores = torch.cat([held, torch.zeros_like(added[..., before:])], dim=-1)
        if call.query_aware and call.phase == "context":
            layer.h2o_scores = scores + added
            return
        end = total if (call.query_aware or before == 0) else before
        if call.query_aware or before == 0:
            scores, added = scores + added, torch.zeros_like(added)  # the prompt itself may score
        keep = self.target_for(call, end)
        if end > keep:  # query-agnostic later prompts: scored without the new prompt's attention
            chosen = with_tail(h2o_keep(scores[..., :end], keep, self._recent(keep)), end, total)
            keep_in_layer(layer, chosen)
            scores, added = scores.gather(-1, chosen), added.gather(-1, chosen)
        layer.h2o_scores = scores + added
        limits[call.layer_idx] = layer.keys.shape[-2]

