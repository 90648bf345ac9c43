"""A KV session: one cache being grown by feeding tokens through the model, with the method's hooks active.

The session owns the true token position (RoPE positions keep counting when a method evicts entries, so the
cache length and the position differ), calls the model with the keyword names of whichever transformers version
is installed, and can snapshot and restore its cache and method state.

It also defines what a method's layer hooks see (`LayerCall`, `Phase`) and, as a Protocol, the calls a session
makes on its method (`SessionMethod`), so the engine sits below `cachebench.method` and never imports it:
`KVMethod` satisfies the Protocol by its shape.
"""

from __future__ import annotations

import copy
import inspect
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch

from cachebench.models.anatomy import attention_modules, cache_bytes, tensor_bytes

if TYPE_CHECKING:
    from cachebench.models.loaded import LoadedModel

Phase = Literal["context", "query", "decode"]


@dataclass
class LayerCall:
    """One attention layer's forward, seen right after it appended its new keys/values to the cache."""

    layer_idx: int
    phase: Phase
    module: torch.nn.Module  # the attention module: q_proj/k_proj/... for methods that recompute queries
    hidden_states: torch.Tensor  # the attention input for the new tokens, (batch, new_tokens, hidden)
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None  # RoPE (cos, sin) of the new tokens
    positions: torch.Tensor  # true positions of the new tokens (1-D); differ from cache indices once evicted
    cache: Any  # transformers Cache: cache.layers[layer_idx].keys / .values, (batch, kv_heads, length, head_dim)
    state: dict[str, Any]  # per-cache method state, snapshotted and restored with the cache
    query_aware: bool = False  # compression setting: may the first question be part of the compressed prefill?
    attention_mask: torch.Tensor | None = None  # before_layer only: the mask the layer will use; methods may replace it


class SessionMethod(Protocol):
    """What a session and its layer hooks call on their method (cachebench.method.KVMethod documents each)."""

    def new_cache(self, model: LoadedModel) -> Any: ...

    def prefill(self, session: KVSession, token_ids: Sequence[int], phase: Phase) -> torch.Tensor: ...

    def before_layer(self, call: LayerCall) -> None: ...

    def on_layer(self, call: LayerCall) -> None: ...


def _keyword(model: torch.nn.Module, new: str, old: str) -> str:
    """transformers renamed some forward arguments (past_key_values -> cache, ...): pick the one this model takes."""
    params = inspect.signature(model.forward).parameters
    return new if new in params else old


def layer_length(cache: Any, layer_idx: int) -> int:
    """Entries a cache layer holds now (0 before its first write)."""
    layer = cache.layers[layer_idx] if hasattr(cache, "layers") and layer_idx < len(cache.layers) else None
    keys = getattr(layer, "keys", None)
    return int(keys.shape[-2]) if isinstance(keys, torch.Tensor) and keys.dim() == 4 else 0


def causal_mask_for(past: int, new: int, like: torch.Tensor) -> torch.Tensor:
    """A (1, 1, new, past + new) causal mask for a layer holding `past` entries, in `like`'s convention
    (boolean keep-mask, or additive float mask)."""
    rows = torch.arange(new, device=like.device).unsqueeze(1)
    cols = torch.arange(past + new, device=like.device).unsqueeze(0)
    visible = (cols <= rows + past).view(1, 1, new, past + new)
    if like.dtype == torch.bool:
        return visible
    zero = torch.zeros((), dtype=like.dtype, device=like.device)
    return torch.where(visible, zero, torch.finfo(like.dtype).min)


class LayerHooks:
    """Hooks on every attention module that report each layer's call to the active session's method.

    The pre-hook also repairs the attention mask when layers hold different numbers of entries: transformers
    sizes one mask from layer 0's length, which is wrong for a layer a method compressed to another budget.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self._session: KVSession | None = None
        self._phase: Phase = "context"
        self._positions: torch.Tensor | None = None
        self._handles = []
        for idx, module in enumerate(attention_modules(model)):
            self._handles.append(module.register_forward_pre_hook(self._make_pre_hook(idx), with_kwargs=True))
            self._handles.append(module.register_forward_hook(self._make_hook(idx), with_kwargs=True))

    def _call(
        self, session: KVSession, layer_idx: int, module: torch.nn.Module, args: tuple, kwargs: dict
    ) -> LayerCall:
        return LayerCall(
            layer_idx=layer_idx,
            phase=self._phase,
            module=module,
            hidden_states=kwargs.get("hidden_states", args[0] if args else None),
            position_embeddings=kwargs.get("position_embeddings"),
            positions=self._positions,
            cache=session.cache,
            state=session.state,
            query_aware=session.query_aware,
            attention_mask=kwargs.get("attention_mask"),
        )

    def _make_pre_hook(self, layer_idx: int):
        def pre_hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            session = self._session
            if session is None:
                return None
            call = self._call(session, layer_idx, module, args, kwargs)
            mask = call.attention_mask
            if mask is not None:
                new = call.hidden_states.shape[1]
                past = layer_length(session.cache, layer_idx)
                if mask.shape[-1] != past + new:
                    call.attention_mask = causal_mask_for(past, new, mask)
            session.method.before_layer(call)
            if call.attention_mask is mask:
                return None
            return args, {**kwargs, "attention_mask": call.attention_mask}

        return pre_hook

    def _make_hook(self, layer_idx: int):
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            session = self._session
            if session is None:
                return
            tracked = self._phase == "context"
            if tracked:  # the layer's new entries, before the method may evict them
                session.note_layer_bytes(layer_idx)
            session.method.on_layer(self._call(session, layer_idx, module, args, kwargs))
            if tracked:
                session.note_layer_bytes(layer_idx)

        return hook

    def activate(self, session: KVSession | None, phase: Phase, positions: torch.Tensor | None) -> None:
        self._session, self._phase, self._positions = session, phase, positions

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


@dataclass(frozen=True)
class Segment:
    """A run of context tokens [start, end): one chunk's own tokens (reusable in any episode) or text around them."""

    start: int
    end: int
    reusable: bool


@dataclass
class ReuseCounters:
    """What a reuse method loaded instead of computing, where from, and what it computed again anyway."""

    reused_tokens: int = 0  # tokens whose KV was loaded from a store
    recomputed_tokens: int = 0  # loaded tokens computed again (selective recompute)
    tier_tokens: Counter = field(default_factory=Counter)  # loaded tokens by store tier ("device", "cpu", "disk")
    load_ms: float = 0.0  # time spent fetching from the store
    corrupt_blocks: int = 0  # stored blocks that failed verification on load: deleted, computed again

    def since(self, earlier: ReuseCounters) -> ReuseCounters:
        return ReuseCounters(
            self.reused_tokens - earlier.reused_tokens,
            self.recomputed_tokens - earlier.recomputed_tokens,
            self.tier_tokens - earlier.tier_tokens,
            self.load_ms - earlier.load_ms,
            self.corrupt_blocks - earlier.corrupt_blocks,
        )

    def copy(self) -> ReuseCounters:
        return ReuseCounters(self.reused_tokens, self.recomputed_tokens, Counter(self.tier_tokens), self.load_ms,
                             self.corrupt_blocks)


@dataclass
class Snapshot:
    """A copy of a session's cache, method state and position."""

    cache: Any
    state: dict[str, Any]
    position: int


class KVSession:
    """One growing KV cache for one episode (a context and its turns)."""

    def __init__(
        self,
        model: LoadedModel,
        method: SessionMethod,
        hooks: LayerHooks | None,
        query_aware: bool = False,
        segments: tuple[Segment, ...] | None = None,
    ) -> None:
        self.model = model
        self.method = method
        self.query_aware = query_aware  # the run's compression setting, handed to the method with each layer call
        self.cache = method.new_cache(model)
        self.state: dict[str, Any] = {}
        self.position = 0
        self.segments = segments  # a chunked context's layout (chunk tokens vs text around them), else None
        self.reuse = ReuseCounters()
        # the most bytes the cache held at any moment of a context prefill: with layer hooks, tracked layer by
        # layer inside each forward (a layer's new entries count before the method evicts any)
        self.peak_kv_bytes = 0
        self._layer_bytes: dict[int, int] = {}
        self._hooks = hooks
        net = model.model
        self._cache_kw = _keyword(net, "cache", "past_key_values")
        self._logits_kw = _keyword(net, "logits_to_keep", "num_logits_to_keep")

    def forward(self, token_ids: Sequence[int] | torch.Tensor, phase: Phase) -> torch.Tensor:
        """Run the model over new tokens at the next true positions; returns the last position's logits."""
        device = self.model.device
        ids = torch.as_tensor(token_ids, dtype=torch.long, device=device).reshape(1, -1)
        count = ids.shape[1]
        positions = torch.arange(self.position, self.position + count, device=device)
        if self._hooks is not None:
            self._hooks.activate(self, phase, positions)
        try:
            out = self.model.model(
                input_ids=ids,
                position_ids=positions.unsqueeze(0),
                use_cache=True,
                **{self._cache_kw: self.cache, self._logits_kw: 1},
            )
        finally:
            if self._hooks is not None:
                self._hooks.activate(None, phase, None)
        self.position += count
        if phase == "context":
            self.note_cache_bytes()
        return out.logits[0, -1]

    def note_layer_bytes(self, layer_idx: int) -> None:
        """Record one layer's size now and the cache total it makes (while a context is prefilled)."""
        layers = getattr(self.cache, "layers", None)
        if layers is None or layer_idx >= len(layers):
            return
        self._layer_bytes[layer_idx] = tensor_bytes(layers[layer_idx])
        self.peak_kv_bytes = max(self.peak_kv_bytes, sum(self._layer_bytes.values()))

    def note_cache_bytes(self) -> None:
        """Record the whole cache's size now (after a forward, or after a method replaced the cache)."""
        layers = getattr(self.cache, "layers", None)
        if layers is None:  # a cache object without layers: count its tensors as one
            self._layer_bytes = {}
            self.peak_kv_bytes = max(self.peak_kv_bytes, cache_bytes(self.cache))
            return
        self._layer_bytes = {i: tensor_bytes(layer) for i, layer in enumerate(layers)}
        self.peak_kv_bytes = max(self.peak_kv_bytes, sum(self._layer_bytes.values()))

    def reset_cache(self) -> None:
        """Start an empty cache at position 0 (a method building several caches for one context); the peak
        stays, since the caches were built one after another in the same memory."""
        self.cache = self.method.new_cache(self.model)
        self.position = 0
        self._layer_bytes = {}

    def fresh(self) -> KVSession:
        """A new empty session on the same model, method and hooks (for a method's own calibration passes)."""
        return KVSession(self.model, self.method, self._hooks, self.query_aware, self.segments)

    def prefill(self, token_ids: Sequence[int], phase: Phase) -> torch.Tensor:
        """Feed prompt tokens through the method (which may reuse stored KV instead of computing it)."""
        return self.method.prefill(self, token_ids, phase)

    def snapshot(self) -> Snapshot:
        return Snapshot(copy.deepcopy(self.cache), copy.deepcopy(self.state), self.position)

    def restore(self, snap: Snapshot) -> None:
        """Return to a snapshot; the snapshot itself stays untouched for later restores."""
        self.cache = copy.deepcopy(snap.cache)
        self.state = copy.deepcopy(snap.state)
        self.position = snap.position
