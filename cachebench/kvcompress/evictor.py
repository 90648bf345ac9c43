"""The schedule every token-eviction method shares: when to compress, which queries may score, what is protected.

Compression runs inside the attention hook, layer by layer, right after the layer wrote its new entries:

  query-agnostic  the context prefill is compressed as it finishes, scored by its own last `window` tokens.
                  A later prompt (next question, follow-up turn) is never used to score: when the entries held
                  before it exceed the layer's target, they are compressed back to the target, scored by the
                  queries of the last `window` tokens fed *before* the prompt; the new prompt is kept whole.
  query-aware     the context is left uncompressed until the first question arrives; that prompt's forward
                  compresses everything to the target, scored by the prompt's last `window` tokens (which
                  contain the question). Later turns compress again whenever the cache exceeds the target.

The target (entries kept per layer and head) is fixed the first time a layer is compressed, so a multi-turn
cache is brought back to the same budget each turn. Subclasses supply the selection rule (`select`, or only
`score`: per-entry importance, the base keeping the top entries with window and sinks protected) and may
override the per-layer target (`layer_target`); a method that also evicts while decoding (H2O) overrides
`on_layer` and reuses `target_for`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from cachebench.engine.session import LayerCall
from cachebench.kvcompress.prune import keep_in_layer, top_k_sorted, with_tail
from cachebench.kvcompress.queries import WindowInputs
from cachebench.method import KVMethod

STATE_KEY = "eviction"


def eviction_state(call: LayerCall) -> dict[str, Any]:
    """Per-cache state of the schedule: targets and window inputs per layer (snapshotted with the cache)."""
    return call.state.setdefault(STATE_KEY, {"target": {}, "window": {}, "reference": {}})


def protect(scores: torch.Tensor, sinks: int, window: int) -> torch.Tensor:
    """`scores` (float) with the last `window` entries ranked above everything (newest highest), then the first
    `sinks` (earliest highest), so top-k keeps them first whatever the scores; NaN scores rank lowest."""
    length = scores.shape[-1]
    window = min(window, length)
    sinks = min(sinks, length - window)
    ranked = torch.nan_to_num(scores.float(), nan=-torch.inf)
    finite = ranked[torch.isfinite(ranked)]
    above = (finite.max() if finite.numel() else ranked.new_zeros(())) + 1
    ranked = ranked.clone()
    if sinks:
        ranked[..., :sinks] = above + torch.arange(sinks, 0, -1, device=ranked.device, dtype=ranked.dtype) / (sinks + 1)
    if window:
        ranked[..., length - window:] = above + 1 + torch.arange(window, device=ranked.device, dtype=ranked.dtype)
    return ranked


class EvictionMethod(KVMethod):
    """Base of methods that keep a subset of each layer's tokens (per KV head) within a budget."""

    uses_layer_hook = True
    uses_queries: ClassVar[bool] = True  # False for rules that need no attention scores (StreamingLLM)

    @property
    def window(self) -> int:
        """Observation window: how many of the latest tokens score the others (and are always kept)."""
        return int(getattr(self.params, "window", 0))

    def layer_target(self, call: LayerCall, reference: int) -> int:
        """Entries this layer keeps, given the length the budget refers to (the first compressed prefill)."""
        return self.params.kept(reference)

    def score(self, call: LayerCall, keys: torch.Tensor, queries: torch.Tensor | None) -> torch.Tensor:
        """Importance (batch, kv_heads, L) of each entry of `keys` (batch, kv_heads, L, d), higher kept; `queries`
        (batch, q_heads, w, d) are the window tokens at the last w indices of `keys` (None when `uses_queries` is
        False). A method may define only this (kvpress's shape): `select` then does the rest."""
        raise NotImplementedError(f"{type(self).__name__} defines neither score() nor select()")

    def select(self, call: LayerCall, keys: torch.Tensor, queries: torch.Tensor | None, keep: int) -> torch.Tensor:
        """Indices (batch, kv_heads, keep), ascending, of the entries to keep among `keys` (batch, kv_heads, L, d);
        `queries` (batch, q_heads, w, d) are the window tokens at the last w indices of `keys`.

        The default keeps the top `keep` of `score`, with the observation window (the tokens whose queries score,
        `window` when no queries are used) and the first `sinks` entries (where the method declares `sinks`)
        protected: the window first, newest before older, then the sinks, then the best scored."""
        scores = self.score(call, keys, queries)
        length = keys.shape[2]
        if tuple(scores.shape) != (keys.shape[0], keys.shape[1], length):
            raise ValueError(f"{self.name}.score returned shape {tuple(scores.shape)}, expected "
                             f"{(keys.shape[0], keys.shape[1], length)}")
        window = queries.shape[2] if queries is not None else self.window
        return top_k_sorted(protect(scores, int(getattr(self.params, "sinks", 0)), window), keep)

    def on_layer(self, call: LayerCall) -> None:
        layer = call.cache.layers[call.layer_idx]
        total = layer.keys.shape[-2]
        new = call.hidden_states.shape[1]
        state = eviction_state(call)
        if call.phase == "decode":
            pass  # nothing evicts mid-reply; the next prompt brings the cache back to its target
        elif call.query_aware:
            if call.phase != "context":
                self._compress(call, end=total, window_inputs=self._fresh_window(call))
        else:
            before = total - new
            if before == 0:
                self._compress(call, end=total, window_inputs=self._fresh_window(call))
            else:
                self._compress(call, end=before, window_inputs=state["window"].get(call.layer_idx))
        if not call.query_aware and self.uses_queries and self.window:
            self._remember_window(call, state)

    def _fresh_window(self, call: LayerCall) -> WindowInputs | None:
        if not self.uses_queries or not self.window:
            return None
        return WindowInputs.tail_of(call.hidden_states, call.position_embeddings, self.window)

    def _remember_window(self, call: LayerCall, state: dict[str, Any]) -> None:
        """Keep the last `window` tokens' inputs, to score a later compression without the next prompt."""
        newest = WindowInputs.tail_of(call.hidden_states, call.position_embeddings, self.window)
        held = state["window"].get(call.layer_idx)
        state["window"][call.layer_idx] = newest if held is None else held.extended(newest, self.window)

    def target_for(self, call: LayerCall, reference: int) -> int:
        """The layer's target, fixed the first time the layer is compressed."""
        state = eviction_state(call)
        if call.layer_idx not in state["target"]:
            state["reference"][call.layer_idx] = reference
            state["target"][call.layer_idx] = self.layer_target(call, reference)
        return state["target"][call.layer_idx]

    def _compress(self, call: LayerCall, end: int, window_inputs: WindowInputs | None) -> None:
        """Keep `target` of the first `end` entries (plus every entry after `end`), if more are held."""
        keep = self.target_for(call, end)
        if end <= keep:
            return
        layer = call.cache.layers[call.layer_idx]
        queries = None
        if window_inputs is not None:
            queries = window_inputs.queries(call.module)
            queries = queries[:, :, -min(queries.shape[2], end):]
        chosen = self.select(call, layer.keys[:, :, :end], queries, keep)
        keep_in_layer(layer, with_tail(chosen, end, layer.keys.shape[-2]))
