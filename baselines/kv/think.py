"""`think`: query-driven key-channel pruning on top of a token eviction (Xu et al., 2024, "ThinK: Thinner Key Cache
by Query-Driven Pruning", arXiv:2407.21018).

ThinK observes that a key cache's channels are very unequal in magnitude and that the attention logits are close to
low rank, so many key channels can go. After the prompt is compressed by a token-eviction method (the paper reports
ThinK on top of SnapKV and H2O), each layer and KV head keeps the ⌊(1 − λ)·d⌋ key channels j with the largest
||Q[:, j] K[:, j]^T||_F = ||Q[:, j]|| · ||K[:, j]|| (Q the observation window's queries, K the kept keys; the greedy
solution of the paper's problem: the channel subset that best preserves Q K^T), and stores the pruned keys with the
kept channel indices; values are kept whole. A query then uses only the kept channels against the pruned keys.
The channel rule and the storage are `cachebench.kvcompress.channels`; the token eviction is the suite's own method
chosen by `evict` (its rule and per-layer budgets, with this method's budget and window), run first by the shared
schedule, so the query-agnostic / query-aware timing is the one every eviction method has.

As in the authors' code, the newest `window` entries of a compressed prompt and every entry added after the pruning
(the reply's tokens, and under query-agnostic compression the next prompt) keep all their channels until the next
compression, which prunes all of them but the newest `window`.

Departures from the paper, and why:
  - GQA: the authors' code repeats the keys for every query head before caching and chooses channels per query
    head; a cache shared by a KV head's query heads needs one choice per KV head, so the group's window queries are
    stacked (||Q_group[:, j]||, the Frobenius norm of the group's logits term), which ranks channels as kvpress's
    ThinKPress does.
  - The score is the product of the L2 norms; the authors' code multiplies the mean squares, the same ranking.
  - The number kept is ⌊(1 − λ)·d⌋ (the authors' code prunes ⌊λ·d⌋, which keeps one more channel when λ·d is not
    an integer: 38 rather than 39 of 64 at λ = 0.4).
  - Multi-turn: the paper prunes a single prompt once. Here a layer's channels are chosen once, at its first
    compression (from the context's window under query-agnostic compression, from the first question's under
    query-aware), and every later compression prunes the entries that leave the window with the same channels:
    one mask per head and layer, as the paper stores, and nothing pruned is ever needed again.
  - `ratio=0` (no budget) means channel pruning alone: the token eviction is skipped altogether (otherwise the
    schedule would bring a multi-turn cache back to the first context's length).
  - The channel indices are stored as int64 and counted in kv_bytes (the paper stores a binary mask); it is
    d_kept · 8 bytes per layer and head, negligible next to the keys.
The method section was read through the authors' code (SalesforceAIResearch/ThinK), kvpress's ThinKPress and the
paper's abstract and Figure 1; the full text of the paper could not be read here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from cachebench.engine.session import LayerCall
from cachebench.kvcompress.budget import BudgetParams
from cachebench.kvcompress.channels import ChannelPrunedLayer, channels_kept, keep_channels
from cachebench.kvcompress.evictor import EvictionMethod, held_length
from cachebench.kvcompress.queries import WindowInputs
from cachebench.models.anatomy import head_dim
from cachebench.params import param

from .pyramidkv import PyramidKV, PyramidKVParams
from .snapkv import SnapKV, SnapKVParams
from .streamingllm import StreamingLLM, StreamingParams

EVICTORS = ("snapkv", "pyramidkv", "streamingllm")


@dataclass(frozen=True)
class ThinKParams(BudgetParams):
    channel_ratio: float = param(0.4, "λ: fraction of each KV head's key channels pruned (below 1)", low=0.0)
    window: int = param(32, "observation window: the last tokens whose queries score channels and tokens (kept whole)",
                        low=1)
    evict: str = param("snapkv", "token eviction ThinK composes with; ratio/budget is its budget (ratio=0: channel "
                       "pruning alone)", choices=EVICTORS)
    kernel: int = param(7, "SnapKV/PyramidKV pooling kernel along the sequence (odd)", low=1)
    pooling: str = param("avg", "SnapKV/PyramidKV pooling of the window's attention", choices=("avg", "max"))

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.channel_ratio < 1.0:
            raise ValueError(f"channel_ratio={self.channel_ratio}: it is the fraction of key channels pruned, "
                             "so it must be below 1")


def build_evictor(params: ThinKParams) -> EvictionMethod:
    """The token-eviction method ThinK runs first, with ThinK's budget and window."""
    budget = {"ratio": params.ratio, "budget": params.budget}
    if params.evict == "snapkv":
        return SnapKV(SnapKVParams(**budget, window=params.window, kernel=params.kernel, pooling=params.pooling))
    if params.evict == "pyramidkv":
        return PyramidKV(PyramidKVParams(**budget, window=params.window, kernel=params.kernel,
                                         pooling=params.pooling))
    return StreamingLLM(StreamingParams(**budget))


class ThinK(EvictionMethod):
    name = "think"
    summary = ("Query-driven key-channel pruning (||Q_j||·||K_j||, pruned keys really stored) after a token "
               "eviction (Xu et al., 2024).")
    Params = ThinKParams
    uses_queries = True  # the channels are scored by the window's queries, whatever the token eviction needs
    # the reply's keys are appended whole to a layer holding pruned keys: static decode buffers of dense keys
    # would not hold what this method stores
    fixed_cache_while_decoding = False

    def __init__(self, params: ThinKParams) -> None:
        super().__init__(params)
        self.evictor = build_evictor(params)

    def check_config(self, config: Any) -> None:
        dim = head_dim(config)
        if channels_kept(dim, self.params.channel_ratio) < 1:
            raise ValueError(f"channel_ratio={self.params.channel_ratio} keeps no key channel of the {dim} per head "
                             f"(⌊(1 − λ)·{dim}⌋ = 0)")

    def new_cache(self, model: Any) -> DynamicCache:
        cache = DynamicCache(config=model.config)
        cache.layers = [ChannelPrunedLayer() for _ in cache.layers]
        return cache

    # --- the token eviction: the chosen method's rule and budgets -----------------------------------------------

    def score(self, call: LayerCall, keys: torch.Tensor, queries: torch.Tensor | None) -> torch.Tensor:
        return self.evictor.score(call, keys, queries if self.evictor.uses_queries else None)

    def select(self, call: LayerCall, keys: torch.Tensor, queries: torch.Tensor | None, keep: int) -> torch.Tensor:
        return self.evictor.select(call, keys, queries if self.evictor.uses_queries else None, keep)

    def layer_target(self, call: LayerCall, reference: int) -> int:
        return self.evictor.layer_target(call, reference)

    @property
    def evicts_tokens(self) -> bool:
        """False for `ratio=0` without a budget: channel pruning alone."""
        return self.params.budget is not None or self.params.ratio > 0

    # --- the channel pruning ----------------------------------------------------------------------------------

    def compress(self, call: LayerCall, end: int, window_inputs: WindowInputs | None) -> None:
        """Token eviction of the first `end` entries (the schedule's), then the key channels of every kept entry but
        the newest `window` pruned, with the channels chosen at the layer's first pruning."""
        layer = call.cache.layers[call.layer_idx]
        tail = held_length(layer) - end  # entries after `end` (a new prompt) are neither evicted nor pruned now
        if self.evicts_tokens:
            super().compress(call, end, window_inputs)
        else:
            self.target_for(call, end)
        kept = held_length(layer) - tail
        recent = min(window_inputs.hidden.shape[1] if window_inputs is not None else self.window, kept)
        if kept - recent <= layer.thin_length:
            return
        if layer.channels is None:
            if window_inputs is None:
                return
            queries = window_inputs.queries(call.module)[:, :, -recent:]
            keys = layer.keys[:, :, :kept]
            layer.choose_channels(keep_channels(queries, keys, channels_kept(keys.shape[-1],
                                                                             self.params.channel_ratio)))
        layer.prune(kept - recent)
