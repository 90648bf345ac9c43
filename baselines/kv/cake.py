"""`cake`: cascading, preference-driven per-layer budgets with a shift-tolerant eviction indicator (Qin et al.,
2025, "CAKE: Cascading and Adaptive KV Cache Eviction with Layer Preferences", ICLR 2025, arXiv:2503.12491).

Per layer, the observation window's attention A (window queries x prefix keys, softmax over the whole layer) gives
  spatial dispersion  H = -sum A log A                 (summed over heads, window queries and prefix keys)
  temporal shift      V = sum_j Var_i A[i, j]          (variance over the window queries, summed over heads, keys)
  preference          P = H^(1/tau1) * V^(1/tau2)
and the prefix budget B_total = layers x (kept - window) is sliced in proportion to P (each layer also keeps its
window, so the per-layer average equals the uniform budget `kept`). The slicing runs as a cascade during prefill
(the schedule's `cascades_budgets` piece, cachebench/kvcompress/evictor.py): when layer m finishes, the budget is
re-sliced among layers 0..m by their preferences and the earlier layers are evicted down to their new, smaller
shares, so the cache never holds more than the total budget. Tokens are ranked by the eviction indicator
I = mean_i A[i, j] + gamma * Var_i A[i, j], average-pooled along the sequence (kernel 5) and averaged over the query
heads sharing a KV head (GQA); the window is always kept. A layer's indicator is computed once, from its own
window, and re-used for its later cascade evictions (as in the paper).

Choices where the paper leaves room: a layer whose proportional share exceeds its length is capped and the excess
is re-sliced among the others, again by preference (water-filling; the authors' code spreads it evenly); shares are
rounded by largest remainder so they sum exactly to the total; the variance is the unbiased one (as in the authors'
code). Departures: the paper scores with the window's attention of the one prefill; here the shared schedule
decides which window scores (the context's own tail query-agnostic, the question query-aware). A later turn that
pushes a layer over its fixed per-layer target is brought back with the same indicator, scored by that turn's
window, without re-slicing (the paper evaluates single prefills; re-slicing would need every layer's attention
again). The cascade's memory bound covers the layers it has reached: query-aware, the schedule holds the whole
context uncompressed until the question's forward, so layers not yet reached there are still full.
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
class CAKEParams(BudgetParams):
    window: int = param(32, "observation window: the last tokens whose attention scores the rest (always kept)",
                        low=1)
    tau1: float = param(1.0, "temperature of the spatial dispersion (entropy) in the layer preference", low=1e-3)
    tau2: float = param(1.0, "temperature of the temporal shift (variance) in the layer preference", low=1e-3)
    gamma: float = param(200.0, "weight of the attention variance in the eviction indicator", low=0.0)
    kernel: int = param(5, "average-pooling kernel of the eviction indicator along the sequence (odd)", low=1)


def window_moments(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased variance over the window queries: (batch, q_heads, w, L) -> two (batch, q_heads, L).
    (Written out: torch.var over a middle dimension is an order of magnitude slower on CPU.)"""
    w = probs.shape[2]
    mean = probs.mean(dim=2)
    if w < 2:
        return mean, torch.zeros_like(mean)
    return mean, (probs - mean.unsqueeze(2)).square().sum(dim=2) / (w - 1)


def layer_preference(prefix_probs: torch.Tensor, tau1: float, tau2: float, var: torch.Tensor | None = None) -> float:
    """P = H^(1/tau1) * V^(1/tau2) from the window's attention onto the prefix, (batch, q_heads, w, prefix);
    `var` may pass its variance over the window, (batch, q_heads, prefix), when already computed."""
    probs = prefix_probs.float()
    if probs.shape[-1] == 0:
        return 0.0
    entropy = float(-(probs * torch.log(probs + 1e-10)).sum())
    shift = float((window_moments(probs)[1] if var is None else var).sum())
    return max(entropy, 0.0) ** (1.0 / tau1) * max(shift, 0.0) ** (1.0 / tau2)


def eviction_indicator(probs: torch.Tensor, kv_heads: int, gamma: float, kernel: int,
                       moments: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """CAKE's indicator on the prefix, per KV head: (batch, q_heads, w, L) -> (batch, kv_heads, L - w)."""
    mean, var = window_moments(probs) if moments is None else moments
    scores = (mean + gamma * var)[..., : probs.shape[-1] - probs.shape[2]]
    if kernel > 1 and scores.shape[-1] > 0:
        scores = F.avg_pool1d(scores, kernel_size=kernel, stride=1, padding=kernel // 2)
    return group_reduce(scores, kv_heads, "mean")


class CAKE(EvictionMethod):
    name = "cake"
    summary = ("Per-layer budgets from attention entropy and variance, sliced in a cascade during prefill; "
               "mean + variance eviction indicator (Qin et al., 2025).")
    Params = CAKEParams
    cascades_budgets = True

    def score(self, call: LayerCall, keys: torch.Tensor, queries: torch.Tensor | None) -> torch.Tensor:
        """The eviction indicator of every prefix entry; the window's own entries score 0 (the base keeps them)."""
        probs = window_attention(queries, keys, getattr(call.module, "scaling", None))
        scores = eviction_indicator(probs, keys.shape[1], self.params.gamma, self.params.kernel)
        return F.pad(scores, (0, keys.shape[2] - scores.shape[-1]))

    def layer_weight(self, call: LayerCall, keys: torch.Tensor, queries: torch.Tensor) -> float:
        """The layer's preference P from its window's attention onto the prefix."""
        probs = window_attention(queries, keys, getattr(call.module, "scaling", None))
        prefix = keys.shape[2] - queries.shape[2]
        return layer_preference(probs[..., :prefix], self.params.tau1, self.params.tau2)
