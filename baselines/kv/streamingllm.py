"""`streamingllm`: attention sinks plus a recent window (Xiao et al., 2023, "Efficient Streaming Language Models
with Attention Sinks", arXiv:2309.17453). The first `sinks` tokens soak up attention mass whatever their content,
so keeping them with the most recent tokens keeps the model stable; everything in between is dropped."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cachebench.engine.session import LayerCall
from cachebench.kvcompress.budget import BudgetParams
from cachebench.kvcompress.evictor import EvictionMethod, protect
from cachebench.kvcompress.prune import top_k_sorted
from cachebench.params import param


@dataclass(frozen=True)
class StreamingParams(BudgetParams):
    sinks: int = param(4, "first tokens always kept (attention sinks)", low=0)


def streaming_keep(length: int, keep: int, sinks: int, batch: int, heads: int, device: torch.device | str = "cpu"
                   ) -> torch.Tensor:
    """Indices (batch, heads, keep): the first min(sinks, keep) entries and the most recent rest (what
    EvictionMethod.select does with StreamingLLM.score)."""
    return top_k_sorted(protect(recency(length, batch, heads, device), sinks, 0), keep)


def recency(length: int, batch: int, heads: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Every entry scored by its position: the newest is kept first."""
    return torch.arange(length, device=device, dtype=torch.float32).expand(batch, heads, length)


class StreamingLLM(EvictionMethod):
    name = "streamingllm"
    summary = "Attention sinks (first tokens) plus a recent window; no scoring (Xiao et al., 2023)."
    Params = StreamingParams
    uses_queries = False

    def score(self, call: LayerCall, keys: torch.Tensor, queries: torch.Tensor | None) -> torch.Tensor:
        return recency(keys.shape[2], keys.shape[0], keys.shape[1], keys.device)
