"""`cake`: cascading, preference-driven per-layer budgets with a shift-tolerant eviction indicator (Qin et al.,
2025, "CAKE: Cascading and Adaptive KV Cache Eviction with Layer Preferences", ICLR 2025, arXiv:2503.12491).

Per layer, the observation window's attention A (window queries x prefix keys, softmax over the whole layer) gives
  spatial dispersion  H = -sum A log A                 (summed over heads, window queries and prefix keys)
  temporal shift      V = sum_j Var_i A[i, j]          (variance over the window queries, summed over heads, keys)
  preference          P = H^(1/tau1) * V^(1/tau2)
and the prefix budget B_total = layers x (kept - window) is sliced in proportion to P (each layer also keeps its
window, so the per-layer average equals the uniform budget `kept`). The slicing runs as a cascade during prefill:
when layer m finishes, the budget is re-sliced among layers 0..m by their preferences and the earlier layers are
evicted down to their new, smaller shares, so the cache never holds more than the total budget. Tokens are ranked
by the eviction indicator I = mean_i A[i, j] + gamma * Var_i A[i, j], average-pooled along the sequence (kernel 5)
and averaged over the query heads sharing a KV head (GQA); the window is always kept. A layer's indicator is
computed once, from its own window, and re-used for its later cascade evictions (as in the paper), so each step
keeps a prefix of one ranking: the kept prefix is stored in rank order and a later step is a slice, not a new
top-k (attention does not depend on the order of held entries, whose RoPE was applied before caching).

Choices where the paper leaves room: a layer whose proportional share exceeds its length is capped and the excess
is re-sliced among the others, again by preference (water-filling; the authors' code spreads it evenly); shares are
rounded by largest remainder so they sum exactly to the total; the variance is the unbiased one (as in the authors'
code). Departures: the paper scores with the window's attention of the one prefill; here the shared schedule
(evictor.py) decides which window scores (the context's own tail query-agnostic, the question query-aware). A later
turn that pushes a layer over its fixed per-layer target is brought back with the same indicator, scored by that
turn's window, without re-slicing (the paper evaluates single prefills; re-slicing would need every layer's
attention again). The cascade's memory bound covers the layers it has reached: query-aware, the schedule holds the
whole context uncompressed until the question's forward, so layers not yet reached there are still full.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from cachebench.kvcompress.attention import group_reduce, window_attention
from cachebench.kvcompress.budget import BudgetParams
from cachebench.kvcompress.evictor import EvictionMethod, eviction_state
from cachebench.kvcompress.prune import keep_in_layer, keep_top_and_window
from cachebench.kvcompress.queries import WindowInputs
from cachebench.method import LayerCall
from cachebench.params import param

STATE_KEY = "cake"


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


def allocate_budgets(prefs: list[float], total: int, caps: list[int]) -> list[int]:
    """Slice `total` among layers in proportion to `prefs`, no layer above its cap (the excess of capped layers
    goes to the others, again by preference); largest-remainder rounding, so the shares sum to min(total, sum caps).
    Equal weights when every preference is zero."""
    n = len(prefs)
    alloc = [0.0] * n
    free = list(range(n))
    remaining = float(min(total, sum(caps)))
    while free:
        weights = [max(prefs[i], 0.0) for i in free]
        if sum(weights) <= 0.0:
            weights = [1.0] * len(free)
        norm = sum(weights)
        shares = {i: remaining * w / norm for i, w in zip(free, weights, strict=True)}
        capped = [i for i in free if shares[i] >= caps[i]]
        if not capped:
            for i in free:
                alloc[i] = shares[i]
            break
        for i in capped:
            alloc[i] = float(caps[i])
            remaining -= caps[i]
        free = [i for i in free if i not in capped]
    budgets = [int(a) for a in alloc]
    left = min(total, sum(caps)) - sum(budgets)
    order = sorted((i for i in range(n) if budgets[i] < caps[i]), key=lambda i: (-(alloc[i] - budgets[i]), i))
    for i in order[:left]:
        budgets[i] += 1
    return budgets


class CAKE(EvictionMethod):
    name = "cake"
    summary = ("Per-layer budgets from attention entropy and variance, sliced in a cascade during prefill; "
               "mean + variance eviction indicator (Qin et al., 2025).")
    Params = CAKEParams

    def select(self, call: LayerCall, keys: torch.Tensor, queries: torch.Tensor | None, keep: int) -> torch.Tensor:
        """Re-compression of a layer with a fixed target (a later turn): the indicator of this turn's window."""
        probs = window_attention(queries, keys, getattr(call.module, "scaling", None))
        scores = eviction_indicator(probs, keys.shape[1], self.params.gamma, self.params.kernel)
        return keep_top_and_window(scores, keys.shape[2], keep)

    def _compress(self, call: LayerCall, end: int, window_inputs: WindowInputs | None) -> None:
        if call.layer_idx in eviction_state(call)["target"]:
            super()._compress(call, end, window_inputs)
        else:
            self._cascade(call, end, window_inputs)

    def _cascade(self, call: LayerCall, end: int, window_inputs: WindowInputs | None) -> None:
        """First compression of layer m: score it, re-slice the total among layers 0..m, evict all of them."""
        state = eviction_state(call)
        layers = _num_layers(call)
        kept = self.params.kept(end)
        cake = call.state.setdefault(STATE_KEY, {"pref": {}, "rank": {}, "ranked": set(), "held": {}})
        if kept >= end or window_inputs is None:  # nothing to evict: the layer keeps everything
            state["reference"][call.layer_idx] = end
            state["target"][call.layer_idx] = kept
            return
        layer = call.cache.layers[call.layer_idx]
        queries = window_inputs.queries(call.module)[:, :, -min(self.window, end):]
        w = queries.shape[2]
        probs = window_attention(queries, layer.keys[:, :, :end], getattr(call.module, "scaling", None))
        moments = window_moments(probs)
        cake["pref"][call.layer_idx] = layer_preference(probs[..., : end - w], self.params.tau1, self.params.tau2,
                                                        moments[1][..., : end - w])
        scores = eviction_indicator(probs, layer.keys.shape[1], self.params.gamma, self.params.kernel, moments)
        # The indicator is fixed once computed, so every later cascade step keeps a prefix of this ranking.
        cake["rank"][call.layer_idx] = scores.argsort(dim=-1, descending=True)
        cake["held"][call.layer_idx] = (end - w, w)  # (prefix entries, window entries) the layer holds
        window = min(w, kept)
        order = sorted(cake["pref"])
        caps = [end - w] * len(order)
        shares = allocate_budgets([cake["pref"][i] for i in order], layers * (kept - window), caps)
        for idx, share in zip(order, shares, strict=True):
            self._evict_to(call, idx, share, window)
            state["reference"][idx] = end
            state["target"][idx] = share + window
        if call.layer_idx == layers - 1:
            self._finish(call)

    def _evict_to(self, call: LayerCall, idx: int, share: int, window: int) -> None:
        """Keep the `share` best prefix entries of layer `idx` (by its own indicator) and its newest `window`.

        The first eviction stores the kept prefix in rank order, so each later one is a slice (one copy)."""
        cake = call.state[STATE_KEY]
        prefix, held_window = cake["held"][idx]
        share, window = min(share, prefix), min(window, held_window)
        if share == prefix and window == held_window:
            return
        layer = call.cache.layers[idx]
        length = layer.keys.shape[-2]
        recent = prefix + held_window - window  # first window (or tail) entry kept
        if idx not in cake["ranked"]:
            chosen = cake["rank"][idx][..., :share]
            tail = torch.arange(recent, length, device=chosen.device).expand(*chosen.shape[:2], length - recent)
            keep_in_layer(layer, torch.cat([chosen, tail], dim=-1))
            cake["ranked"].add(idx)
        else:
            layer.keys = torch.cat([layer.keys[:, :, :share], layer.keys[:, :, recent:]], dim=2)
            layer.values = torch.cat([layer.values[:, :, :share], layer.values[:, :, recent:]], dim=2)
        cake["held"][idx] = (share, window)

    def _finish(self, call: LayerCall) -> None:
        """End of the cascade: drop the rankings. Evicted layers keep their prefix in indicator-rank order (RoPE is
        applied before caching and every held entry is visible to later tokens, so the order changes nothing;
        sorting it back would cost two gathers per layer)."""
        cake = call.state[STATE_KEY]
        cake["rank"].clear()
        cake["ranked"].clear()
        cake["held"].clear()


def _num_layers(call: LayerCall) -> int:
    config: Any = getattr(call.module, "config", None)
    count = getattr(config, "num_hidden_layers", None)
    return int(count) if count else len(call.cache.layers)
