"""A KV session: one cache being grown by feeding tokens through the model, with the method's hooks active.

The session owns the true token position (RoPE positions keep counting when a method evicts entries, so the
cache length and the position differ), calls the model with the keyword names of whichever transformers version
is installed, and can snapshot and restore its cache and method state.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from cachebench.method import LayerCall, Phase

if TYPE_CHECKING:
    from cachebench.method import KVMethod
    from cachebench.models.loaded import LoadedModel


def _keyword(model: torch.nn.Module, new: str, old: str) -> str:
    """transformers renamed some forward arguments (past_key_values -> cache, ...): pick the one this model takes."""
    params = inspect.signature(model.forward).parameters
    return new if new in params else old


def attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The self-attention module of each decoder layer, in layer order."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    return [layer.self_attn for layer in decoder.layers]


class LayerHooks:
    """Forward hooks on every attention module that report each layer's call to the active session's method."""

    def __init__(self, model: torch.nn.Module) -> None:
        self._session: KVSession | None = None
        self._phase: Phase = "context"
        self._positions: torch.Tensor | None = None
        self._handles = [
            module.register_forward_hook(self._make_hook(idx), with_kwargs=True)
            for idx, module in enumerate(attention_modules(model))
        ]

    def _make_hook(self, layer_idx: int):
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            session = self._session
            if session is None:
                return
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            call = LayerCall(
                layer_idx=layer_idx,
                phase=self._phase,
                module=module,
                hidden_states=hidden,
                position_embeddings=kwargs.get("position_embeddings"),
                positions=self._positions,
                cache=session.cache,
                state=session.state,
            )
            session.method.on_layer(call)

        return hook

    def activate(self, session: KVSession | None, phase: Phase, positions: torch.Tensor | None) -> None:
        self._session, self._phase, self._positions = session, phase, positions

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


@dataclass
class Snapshot:
    """A copy of a session's cache, method state and position."""

    cache: Any
    state: dict[str, Any]
    position: int


class KVSession:
    """One growing KV cache for one episode (a context and its turns)."""

    def __init__(self, model: LoadedModel, method: KVMethod, hooks: LayerHooks | None) -> None:
        self.model = model
        self.method = method
        self.cache = method.new_cache(model)
        self.state: dict[str, Any] = {}
        self.position = 0
        self.reused_tokens = 0  # tokens whose KV a reuse method loaded instead of computing
        self.recomputed_tokens = 0  # reused tokens a method computed again (selective recompute)
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
        return out.logits[0, -1]

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
