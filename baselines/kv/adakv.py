"""`adakv`: head-wise adaptive budgets over a scorer's scores (Feng et al., 2024, "Ada-KV: Optimizing KV Cache
Eviction by Adaptive Budget Allocation for Efficient LLM Inference", arXiv:2407.11550).

A uniform budget gives every KV head of a layer the same number of entries, though some heads concentrate their
attention on a few tokens and others spread it. Ada-KV keeps the layer's total (heads x budget) but hands it to the
best scores of all heads pooled, so a concentrated head gives up entries to a dispersed one; a safeguard first
guarantees each head a share `floor` of its uniform budget (the paper's alpha, 0.2). The paper applies it to SnapKV
and PyramidKV (Ada-SnapKV, Ada-Pyramid); here `scorer` picks whose scores and per-layer targets are pooled, so the
selection is the scorer's own with only the allocation changed. The pooled top-k, the unpadded per-head storage
(each head really holds its own number of entries) and the mask are the schedule's `adapts_head_budgets` piece
(cachebench/kvcompress/evictor.py, cachebench/kvcompress/ragged.py). As in the paper's Ada-SnapKV, each head's
observation window is always kept; kvpress's AdaKVPress also pools with a 0.2 safeguard.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from cachebench.engine.session import LayerCall
from cachebench.kvcompress.evictor import EvictionMethod
from cachebench.params import param

from .knorm import Knorm
from .pyramidkv import PyramidKV, PyramidKVParams
from .snapkv import SnapKV

SCORERS: dict[str, type[EvictionMethod]] = {"snapkv": SnapKV, "pyramidkv": PyramidKV, "knorm": Knorm}


@dataclass(frozen=True)
class AdaKVParams(PyramidKVParams):
    scorer: str = param("snapkv", "whose scores and per-layer targets the heads' pooled budget uses",
                        choices=tuple(SCORERS))
    floor: float = param(0.2, "share of its uniform budget each head keeps whatever the others score (alpha)",
                         low=0.0, high=1.0)


class AdaKV(EvictionMethod):
    name = "adakv"
    summary = ("Head-adaptive budgets: a layer's entries go to the best scores of all its heads pooled, each head "
               "keeping a floor (Feng et al., 2024); SnapKV's scores by default.")
    Params = AdaKVParams
    adapts_head_budgets = True

    def __init__(self, params: Any) -> None:
        super().__init__(params)
        scorer = SCORERS[params.scorer]
        names = {f.name for f in dataclasses.fields(scorer.Params)}
        self.scorer = scorer(scorer.Params(**{n: getattr(params, n) for n in names}))
        self.uses_queries = self.scorer.uses_queries
        self.head_floor = params.floor

    @property
    def window(self) -> int:
        """The scorer's observation window (none for a rule that reads no queries)."""
        return self.scorer.window if self.uses_queries else 0

    def score(self, call: LayerCall, keys: torch.Tensor, queries: torch.Tensor | None) -> torch.Tensor:
        return self.scorer.score(call, keys, queries)

    def layer_target(self, call: LayerCall, reference: int) -> int:
        return self.scorer.layer_target(call, reference)
