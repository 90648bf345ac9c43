"""The interface every KV-cache method implements, and what the runner hands it.

A method sees the model at three depths:
  - per run (`attach`): state that must outlive episodes, such as a store of reusable KV blocks;
  - per context, untimed (`stage`): what a paper assumes happened before the request (chunks encoded offline);
  - per forward (`prefill`): it may replace how a context or query is fed, e.g. load reused KV and compute less;
  - per attention layer, before (`before_layer`): it may replace the attention mask the layer is about to use,
    e.g. to select which cached tokens a decode step attends to;
  - per attention layer, after (`on_layer`): right after a layer wrote its new keys/values, in every phase
    (context prefill, query prefill, each decode step), it may compress, evict, or record statistics.
Per-cache state lives in `call.state` / `session.state`; the runner snapshots it together with the cache, so
multi-request turns each start from the same post-context state. What a layer hook sees (`LayerCall`, `Phase`)
is the engine's: `cachebench.engine.session`, below this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from cachebench.models.anatomy import cache_bytes
from cachebench.params import NoParams

if TYPE_CHECKING:
    import torch

    from cachebench.engine.session import KVSession, LayerCall, Phase
    from cachebench.models.loaded import LoadedModel


class KVMethod:
    """Base class: the uncompressed behaviour. Subclasses override only the hooks they need; a session calls them
    through `cachebench.engine.session.SessionMethod`, which this class satisfies."""

    name: ClassVar[str]
    summary: ClassVar[str]
    track: ClassVar[str] = "kv"
    Params: ClassVar[type] = NoParams
    uses_layer_hook: ClassVar[bool] = False  # attention hooks cost time; only installed when a method wants them
    # A reuse method serves contexts from a store: in multi-request mode every request's context goes through its
    # prefill again (timed), as a serving engine would, instead of restoring a snapshot of the post-context cache.
    reuses_kv: ClassVar[bool] = False
    # False when the cache a reply decodes from is not fixed once the prompt is in: it changes shape at every
    # decode step (H2O, TokenSelect) or is picked by the question (EpiCache). `cachebench perf` decodes over
    # static buffers loaded from the post-prefill cache, so it serves only methods where this is True.
    fixed_cache_while_decoding: ClassVar[bool] = True

    def __init__(self, params: Any) -> None:
        self.params = params

    def check_config(self, config: Any) -> None:
        """Refuse parameters the model's shape cannot take, raising ValueError with a one-line reason, before
        anything loads. `config` has the attributes of the model's transformers config (num_hidden_layers,
        num_key_value_heads, head_dim or hidden_size / num_attention_heads, ...), read without the weights."""

    def attach(self, model: LoadedModel) -> None:
        """Called once per run, before the first episode."""

    def new_cache(self, model: LoadedModel) -> Any:
        """The cache object an episode starts with (a quantized method returns its own cache class)."""
        from transformers import DynamicCache

        return DynamicCache(config=model.config)

    def stage(self, session: KVSession, context_ids: Sequence[int]) -> None:
        """Untimed work before a context prefill: e.g. encode and store chunks that its paper assumes were
        stored ahead of the request."""

    def prefill(self, session: KVSession, token_ids: Sequence[int], phase: Phase) -> torch.Tensor:
        """Feed prompt tokens (the shared context, or a turn's query) and return the last position's logits."""
        return session.forward(token_ids, phase)

    def before_layer(self, call: LayerCall) -> None:
        """Runs before a layer's attention; may set `call.attention_mask`. Only called when `uses_layer_hook`."""

    def on_layer(self, call: LayerCall) -> None:
        """Act on one layer's cache after it was written. Only called when `uses_layer_hook` is true."""

    def kv_bytes(self, cache: Any) -> int:
        """Bytes the cache holds after the method acted (methods keeping data outside the cache add it here)."""
        return cache_bytes(cache)
