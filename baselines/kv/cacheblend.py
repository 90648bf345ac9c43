"""`cacheblend`: reuse stored chunk KV and recompute the tokens whose KV deviates most (Yao et al., 2025,
"CacheBlend: Fast Large Language Model Serving for RAG with Cached Knowledge Fusion", EuroSys '25,
arXiv:2405.16444).

Each chunk's KV is encoded once on its own (behind the prompt's start) and stored with keys before RoPE. At use,
the chunks are placed at their new positions. All tokens are computed through the first layers up to the check
layer; there, the computed KV of each reused token is compared with its stored KV, and the `recompute_ratio` share
of reused tokens with the largest deviation (the paper's HKVD tokens) keeps being computed through the remaining
layers, with full attention over the blended cache; the rest keep their stored KV from the next layer on. Text
around the chunks and the question are always computed. With recompute_ratio 1.0 this is exactly a full prefill.

Where it departs from the paper: the paper selects with gradual filtering over the first layers; like its vLLM
implementation this module selects once, at a single check layer. The deviation is the squared L2 distance of keys
and values summed over KV heads. Storage and loading go through the shared tiered store, not LMCache.
"""

from __future__ import annotations

from dataclasses import dataclass

from cachebench.params import param
from cachebench.reuse.chunks import ChunkParams, ChunkReuseMethod


@dataclass(frozen=True)
class CacheBlendParams(ChunkParams):
    recompute_ratio: float = param(
        0.15, "share of reused tokens recomputed through the layers after the check layer", low=0.0, high=1.0
    )
    check_layer: int = param(
        1,
        "layer at which KV deviation selects the tokens to recompute (layers up to it are computed for every token)",
        low=0,
    )


class CacheBlend(ChunkReuseMethod):
    name = "cacheblend"
    summary = "reuse stored chunk KV, recompute the most-deviating tokens from a check layer on (CacheBlend)"
    Params = CacheBlendParams

    def recompute_plan(self) -> tuple[int | None, float]:
        return self.params.check_layer, self.params.recompute_ratio
