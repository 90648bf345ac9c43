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
cache is brought back to the same budget each turn. A method supplies only its rule, in the shape kvpress gives a
press: `score` (per-entry importance; the base keeps the top entries with the window and sinks protected) or,
for a rule that is not a top-k, `select`. Everything else is a piece of the base, switched on by the method:

  layer_target          per-layer targets (PyramidKV's pyramid); the default is the uniform budget
  cascades_budgets      CAKE's cascade: at each layer's first compression the total budget is re-sliced among the
                        layers reached so far by `layer_weight`, and earlier layers shrink to their new shares
  accumulates_attention each entry carries the attention every query so far paid it (H2O), kept with the cache
                        and readable by `score` through `accumulated_attention_of`
  evicts_while_decoding every decode step evicts back to the size the cache had after the prompt (H2O)
  adapts_head_budgets   Ada-KV's head-adaptive budgets: the layer's heads x target entries go to the best scores
                        of all its heads pooled (each head guaranteed `head_floor` of its target), stored per head
                        without padding (cachebench/kvcompress/ragged.py)
  recent_for            how many of the newest entries are protected (the window by default)
  compress              how a layer is brought to its target; a method with its own storage (RazorAttention's
                        per-head layer) replaces this and keeps the schedule
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from cachebench.engine.session import LayerCall
from cachebench.kvcompress.attention import accumulated_attention, group_reduce
from cachebench.kvcompress.layer_budget import allocate_budgets
from cachebench.kvcompress.prune import keep_in_layer, top_k_sorted, with_tail
from cachebench.kvcompress.queries import WindowInputs
from cachebench.kvcompress.ragged import RaggedLayer, head_adaptive_keep, ragged_mask
from cachebench.method import KVMethod
from cachebench.models.anatomy import project_queries

STATE_KEY = "eviction"


def eviction_state(call: LayerCall) -> dict[str, Any]:
    """Per-cache state of the schedule (snapshotted with the cache); the schedule's own, methods read it through
    `layer_targets` and `accumulated_attention_of`."""
    return call.state.setdefault(STATE_KEY, {"target": {}, "window": {}, "reference": {}})


def layer_targets(state: dict[str, Any]) -> dict[int, int]:
    """Entries each compressed layer keeps (per KV head), from a session's or call's state."""
    return dict(state.get(STATE_KEY, {}).get("target", {}))


def layer_references(state: dict[str, Any]) -> dict[int, int]:
    """The length each layer's budget was taken of (its first compressed prefill)."""
    return dict(state.get(STATE_KEY, {}).get("reference", {}))


ACCUMULATED = "accumulated_attention"  # cache-layer attributes of the `accumulates_attention` piece
PENDING = "pending_attention"


def accumulated_attention_of(call: LayerCall) -> torch.Tensor:
    """(batch, kv_heads, L): the attention each of the layer's held entries received from every query so far
    (the `accumulates_attention` piece), aligned with the cache whatever was evicted. It is held on the cache
    layer, so `kv_bytes` counts it (it is memory the method needs per entry) and snapshots copy it."""
    return getattr(call.cache.layers[call.layer_idx], ACCUMULATED)


def held_length(layer: Any) -> int:
    """Entries a cache layer holds (its longest head's, when heads differ)."""
    if hasattr(layer, "get_seq_length"):
        return int(layer.get_seq_length())
    return int(layer.keys.shape[-2])


def num_layers(call: LayerCall) -> int:
    """Decoder layers of the model the call belongs to."""
    config: Any = getattr(call.module, "config", None)
    count = getattr(config, "num_hidden_layers", None)
    return int(count) if count else len(call.cache.layers)


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
    uses_queries: ClassVar[bool] = True  # False for rules that need no window queries (StreamingLLM, H2O)
    cascades_budgets: ClassVar[bool] = False
    accumulates_attention: ClassVar[bool] = False
    evicts_while_decoding: ClassVar[bool] = False
    adapts_head_budgets: ClassVar[bool] = False
    head_floor: ClassVar[float] = 0.2  # Ada-KV's safeguard: share of a head's target it keeps whatever the others

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.adapts_head_budgets and (cls.accumulates_attention or cls.evicts_while_decoding
                                        or cls.cascades_budgets):
            raise TypeError(f"{cls.__qualname__}: head-adaptive budgets combine with score(), select() and "
                            "layer_target(), not with accumulated attention, decode-time eviction or a cascade")
        if cls.cascades_budgets and cls.accumulates_attention:
            raise TypeError(f"{cls.__qualname__}: the cascade slices earlier layers by their ranking alone and would "
                            "leave accumulated attention out of step with the cache")
        if cls.evicts_while_decoding or cls.adapts_head_budgets:
            # static decode buffers hold one length per layer: a cache that shrinks while decoding, or whose heads
            # hold different lengths, decodes through the model's own forward
            cls.fixed_cache_while_decoding = False

    @property
    def window(self) -> int:
        """Observation window: how many of the latest tokens score the others (and are always kept)."""
        return int(getattr(self.params, "window", 0))

    # --- the rule: what a method defines ---------------------------------------------------------------------

    def score(self, call: LayerCall, keys: torch.Tensor, queries: torch.Tensor | None) -> torch.Tensor:
        """Importance (batch, kv_heads, L) of each entry of `keys` (batch, kv_heads, L, d), higher kept; `queries`
        (batch, q_heads, w, d) are the window tokens at the last w indices of `keys` (None when `uses_queries` is
        False). A method may define only this (kvpress's shape): `select` then does the rest."""
        raise NotImplementedError(f"{type(self).__name__} defines neither score() nor select()")

    def select(self, call: LayerCall, keys: torch.Tensor, queries: torch.Tensor | None, keep: int) -> torch.Tensor:
        """Indices (batch, kv_heads, keep), ascending, of the entries to keep among `keys` (batch, kv_heads, L, d);
        `queries` (batch, q_heads, w, d) are the window tokens at the last w indices of `keys`.

        The default keeps the top `keep` of `score`, with the newest `recent_for` entries and the first `sinks`
        (where the method declares `sinks`) protected: the newest first, then the sinks, then the best scored."""
        scores = self.score(call, keys, queries)
        length = keys.shape[2]
        if tuple(scores.shape) != (keys.shape[0], keys.shape[1], length):
            raise ValueError(f"{self.name}.score returned shape {tuple(scores.shape)}, expected "
                             f"{(keys.shape[0], keys.shape[1], length)}")
        recent = self.recent_for(call, keep, queries)
        return top_k_sorted(protect(scores, int(getattr(self.params, "sinks", 0)), recent), keep)

    def recent_for(self, call: LayerCall, keep: int, queries: torch.Tensor | None) -> int:
        """How many of the newest entries a selection of `keep` protects: the scoring window."""
        return queries.shape[2] if queries is not None else self.window

    def layer_target(self, call: LayerCall, reference: int) -> int:
        """Entries this layer keeps, given the length the budget refers to (the first compressed prefill)."""
        return self.params.kept(reference)

    def layer_weight(self, call: LayerCall, keys: torch.Tensor, queries: torch.Tensor) -> float:
        """A layer's claim on the shared budget under `cascades_budgets` (CAKE's preference)."""
        raise NotImplementedError(f"{type(self).__name__} cascades budgets but defines no layer_weight()")

    def attention_paid(self, call: LayerCall, keys: torch.Tensor) -> torch.Tensor:
        """Attention the forward's new queries paid to every entry of `keys`, summed over each KV head's query
        heads: (batch, kv_heads, L). Column sums of the causal attention in query chunks, never L x L."""
        cos, sin = call.position_embeddings
        queries = project_queries(call.module, call.hidden_states, cos, sin)
        summed = accumulated_attention(queries, keys, getattr(call.module, "scaling", None))
        return group_reduce(summed, keys.shape[1], "sum")

    def new_cache(self, model: Any) -> Any:
        cache = super().new_cache(model)
        if self.adapts_head_budgets:
            cache.layers = [RaggedLayer() for _ in cache.layers]
        return cache

    def before_layer(self, call: LayerCall) -> None:
        """Heads of different lengths: a per-head mask hides each head's padding in the dense attention call."""
        layer = call.cache.layers[call.layer_idx]
        if isinstance(layer, RaggedLayer) and layer.is_split:
            hidden = call.hidden_states
            dtype = torch.float32 if hidden.device.type == "cpu" else hidden.dtype
            call.attention_mask = ragged_mask(layer.head_lengths(), call.module.config.num_attention_heads,
                                              hidden.shape[1], hidden.device, dtype)

    # --- the schedule: what the base does --------------------------------------------------------------------

    def on_layer(self, call: LayerCall) -> None:
        layer = call.cache.layers[call.layer_idx]
        total = held_length(layer)
        new = call.hidden_states.shape[1]
        before = total - new
        state = eviction_state(call)
        # May the new tokens score? Not a later prompt under query-agnostic compression.
        may_score = call.phase == "decode" or call.query_aware or before == 0
        if self.accumulates_attention:
            self._accumulate(layer, call, before, may_score)
        if call.phase == "decode":
            if self.evicts_while_decoding:
                limit = state.setdefault("limit", {}).get(call.layer_idx, total)
                if total > limit:
                    self.keep_entries(call, self.select(call, layer.keys, None, limit))
        elif call.query_aware:
            if call.phase != "context":
                self._compress(call, end=total, window_inputs=self._fresh_window(call))
        elif before == 0:
            self._compress(call, end=total, window_inputs=self._fresh_window(call))
        else:
            self._compress(call, end=before, window_inputs=state["window"].get(call.layer_idx))
        if self.accumulates_attention and not may_score:  # the prompt's attention counts from now on
            setattr(layer, ACCUMULATED, getattr(layer, ACCUMULATED) + getattr(layer, PENDING))
            setattr(layer, PENDING, None)
        if not call.query_aware and self.uses_queries and self.window:
            self._remember_window(call, state)
        if self.evicts_while_decoding and call.phase != "decode":
            state.setdefault("limit", {})[call.layer_idx] = held_length(layer)

    def target_for(self, call: LayerCall, reference: int) -> int:
        """The layer's target, fixed the first time the layer is compressed."""
        state = eviction_state(call)
        if call.layer_idx not in state["target"]:
            state["reference"][call.layer_idx] = reference
            state["target"][call.layer_idx] = self.layer_target(call, reference)
        return state["target"][call.layer_idx]

    def compress(self, call: LayerCall, end: int, window_inputs: WindowInputs | None) -> None:
        """Keep the layer's target of its first `end` entries (every entry after `end` stays), if more are held."""
        keep = self.target_for(call, end)
        layer = call.cache.layers[call.layer_idx]
        if self.adapts_head_budgets:
            self._compress_heads(call, layer, end, window_inputs, keep)
            return
        if end <= keep:
            return
        queries = None
        if window_inputs is not None:
            queries = window_inputs.queries(call.module)
            queries = queries[:, :, -min(queries.shape[2], end):]
        chosen = self.select(call, layer.keys[:, :, :end], queries, keep)
        self.keep_entries(call, with_tail(chosen, end, layer.keys.shape[-2]))

    def keep_entries(self, call: LayerCall, indices: torch.Tensor) -> None:
        """Keep the layer's entries at `indices` (batch, kv_heads, k); what the schedule holds per entry follows."""
        layer = call.cache.layers[call.layer_idx]
        keep_in_layer(layer, indices)
        for name in (ACCUMULATED, PENDING):
            held = getattr(layer, name, None)
            if held is not None:
                setattr(layer, name, held.gather(-1, indices))

    def _compress_heads(self, call: LayerCall, layer: RaggedLayer, end: int, window_inputs: WindowInputs | None,
                        keep: int) -> None:
        """Head-adaptive compression: each head scored on its own entries (the first `end` of the layer, or of
        each head once their lengths differ), the layer's heads x `keep` shared out by `head_adaptive_keep`, and
        every entry after the head's first ones (the new prompt) kept."""
        tail = held_length(layer) - end
        prefixes = [length - tail for length in layer.head_lengths()]
        if sum(prefixes) <= keep * len(prefixes):
            return
        keys, _ = layer.dense()
        queries = None
        if window_inputs is not None:
            queries = window_inputs.queries(call.module)
            queries = queries[:, :, -min(queries.shape[2], min(prefixes)):]
        sinks = int(getattr(self.params, "sinks", 0))
        recent = self.recent_for(call, keep, queries)
        if layer.is_split:  # one head at a time, each with its own length and its group's queries
            group = queries.shape[1] // len(prefixes) if queries is not None else 0
            ranked = keys.new_full((keys.shape[0], len(prefixes), max(prefixes)), -torch.inf, dtype=torch.float32)
            for h, prefix in enumerate(prefixes):
                head_queries = queries[:, h * group:(h + 1) * group] if queries is not None else None
                scores = self.score(call, keys[:, h:h + 1, :prefix], head_queries)
                ranked[:, h:h + 1, :prefix] = protect(scores, sinks, recent)
        else:
            ranked = protect(self.score(call, keys[:, :, :end], queries), sinks, recent)
        # the protected entries are each head's top ones: guaranteeing them keeps every head's window and sinks
        floor = max(round(self.head_floor * keep), min(keep, recent + sinks))
        chosen = head_adaptive_keep(ranked, keep, floor)
        layer.split([torch.cat([idx, torch.arange(prefix, prefix + tail, device=idx.device).unsqueeze(0)], dim=-1)
                     for idx, prefix in zip(chosen, prefixes, strict=True)])

    def _compress(self, call: LayerCall, end: int, window_inputs: WindowInputs | None) -> None:
        if self.cascades_budgets and call.layer_idx not in eviction_state(call)["target"]:
            self._cascade(call, end, window_inputs)
        else:
            self.compress(call, end, window_inputs)

    def _accumulate(self, layer: Any, call: LayerCall, before: int, may_score: bool) -> None:
        """Add this forward's attention to every entry's running sum; held back (pending) until after the
        compression when the new tokens may not score."""
        keys = layer.keys
        held = getattr(layer, ACCUMULATED, None)
        if held is None or held.shape[-1] != before:  # the first forward of this cache
            held = torch.zeros(*keys.shape[:2], before, dtype=torch.float32, device=keys.device)
        added = self.attention_paid(call, keys)
        held = torch.cat([held, torch.zeros_like(added[..., before:])], dim=-1)
        setattr(layer, ACCUMULATED, held + added if may_score else held)
        setattr(layer, PENDING, None if may_score else added)

    def _fresh_window(self, call: LayerCall) -> WindowInputs | None:
        if not self.uses_queries or not self.window:
            return None
        return WindowInputs.tail_of(call.hidden_states, call.position_embeddings, self.window)

    def _remember_window(self, call: LayerCall, state: dict[str, Any]) -> None:
        """Keep the last `window` tokens' inputs, to score a later compression without the next prompt."""
        newest = WindowInputs.tail_of(call.hidden_states, call.position_embeddings, self.window)
        held = state["window"].get(call.layer_idx)
        state["window"][call.layer_idx] = newest if held is None else held.extended(newest, self.window)

    # --- the cascade (cascades_budgets) ----------------------------------------------------------------------

    def _cascade(self, call: LayerCall, end: int, window_inputs: WindowInputs | None) -> None:
        """First compression of layer m: score it, re-slice the total among layers 0..m by `layer_weight`, and
        bring every one of them to its share. A layer's scores are taken once, from its own window, and its kept
        prefix is stored in rank order, so each later cascade step is a slice of one ranking (no new top-k; the
        order of held entries does not change attention, RoPE being applied before caching)."""
        state = eviction_state(call)
        kept = self.layer_target(call, end)
        cascade = state.setdefault("cascade", {"weight": {}, "rank": {}, "held": {}, "ranked": set()})
        if kept >= end or window_inputs is None:  # nothing to evict: the layer keeps everything
            state["reference"][call.layer_idx] = end
            state["target"][call.layer_idx] = kept
            return
        layer = call.cache.layers[call.layer_idx]
        keys = layer.keys[:, :, :end]
        queries = window_inputs.queries(call.module)[:, :, -min(self.window, end):]
        w = queries.shape[2]
        cascade["weight"][call.layer_idx] = self.layer_weight(call, keys, queries)
        cascade["rank"][call.layer_idx] = self.score(call, keys, queries)[..., : end - w].argsort(
            dim=-1, descending=True)
        cascade["held"][call.layer_idx] = (end - w, w)  # (prefix entries, window entries) the layer holds
        window = min(w, kept)
        order = sorted(cascade["weight"])
        shares = allocate_budgets([cascade["weight"][i] for i in order], num_layers(call) * (kept - window),
                                  [end - w] * len(order))
        for idx, share in zip(order, shares, strict=True):
            self._shrink_ranked(call, idx, share, window)
            state["reference"][idx] = end
            state["target"][idx] = share + window
        if call.layer_idx == num_layers(call) - 1:  # the cascade is over: drop the rankings
            cascade["rank"].clear()
            cascade["held"].clear()
            cascade["ranked"].clear()

    def _shrink_ranked(self, call: LayerCall, idx: int, share: int, window: int) -> None:
        """Keep the `share` best prefix entries of layer `idx` (by its own ranking) and its newest `window`."""
        cascade = eviction_state(call)["cascade"]
        prefix, held_window = cascade["held"][idx]
        share, window = min(share, prefix), min(window, held_window)
        if share == prefix and window == held_window:
            return
        layer = call.cache.layers[idx]
        length = layer.keys.shape[-2]
        recent = prefix + held_window - window  # first window (or tail) entry kept
        if idx not in cascade["ranked"]:  # the first eviction gathers by rank; later ones slice
            chosen = cascade["rank"][idx][..., :share]
            tail = torch.arange(recent, length, device=chosen.device).expand(*chosen.shape[:2], length - recent)
            keep_in_layer(layer, torch.cat([chosen, tail], dim=-1))
            cascade["ranked"].add(idx)
        else:
            layer.keys = torch.cat([layer.keys[:, :, :share], layer.keys[:, :, recent:]], dim=2)
            layer.values = torch.cat([layer.values[:, :, :share], layer.values[:, :, recent:]], dim=2)
        cascade["held"][idx] = (share, window)
