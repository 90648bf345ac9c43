"""`snapkv`: keep what an observation window attends to (Li et al., 2024, "SnapKV: LLM Knows What You are Looking
for Before Generation", arXiv:2404.14469).

The last `window` prompt tokens' attention onto the earlier tokens is summed over the window, smoothed by a 1-D
pooling along the sequence (so neighbours of a hit survive with it), and the top entries per KV head are kept
together with the window itself. With GQA the scores of the query heads sharing a KV head are averaged. As in the
authors' code and kvpress, average pooling divides by the whole kernel at the edges of the prefix (the zero padding
counts), so the first and last kernel // 2 entries score lower than a pooling over real entries only would give.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cachebench.engine.session import LayerCall
from cachebench.kvcompress.attention import group_reduce, window_attention
from cachebench.kvcompress.budget import BudgetParams
from cachebench.kvcompress.evictor import EvictionMethod
from cachebench.params import param


@dataclass(frozen=True)
class SnapKVParams(BudgetParams):
    window: int = param(32, "observation window: the last tokens whose attention scores the rest (always kept)",
                        low=1)
    kernel: int = param(7, "pooling kernel along the sequence (odd)", low=1)
    pooling: str = param("avg", "pooling of the window's attention", choices=("avg", "max"))


def snapkv_scores(keys: torch.Tensor, queries: torch.Tensor, kernel: int, pooling: str = "avg",
                  scaling: float | None = None) -> torch.Tensor:
    """Pooled window attention onto the prefix, per KV head: (batch, kv_heads, L - w)."""
    w = queries.shape[2]
    probs = window_attention(queries, keys, scaling)  # (batch, q_heads, w, L)
    votes = probs[..., : keys.shape[2] - w].sum(dim=2)  # (batch, q_heads, L - w)
    votes = group_reduce(votes, keys.shape[1], "mean")
    if kernel > 1 and votes.shape[-1] > 0:
        pool = F.avg_pool1d if pooling == "avg" else F.max_pool1d
        flat = votes.reshape(-1, 1, votes.shape[-1])
        flat = pool(flat, kernel_size=kernel, stride=1, padding=kernel // 2)
        votes = flat.reshape(votes.shape)
    return votes


class SnapKV(EvictionMethod):
    name = "snapkv"
    summary = "Observation-window attention, pooled, top-k per KV head; the window is kept (Li et al., 2024)."
    Params = SnapKVParams

    def score(self, call: LayerCall, keys: torch.Tensor, queries: torch.Tensor | None) -> torch.Tensor:
        """The pooled votes of every prefix entry; the window's own entries score 0 (the base keeps them)."""
        votes = snapkv_scores(keys, queries, self.params.kernel, self.params.pooling,
                              getattr(call.module, "scaling", None))
        return F.pad(votes, (0, keys.shape[2] - votes.shape[-1]))
