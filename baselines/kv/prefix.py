"""`prefix`: prefix caching over a tiered KV store (as vLLM's automatic prefix caching and LMCache's local
backends do).

A context is cut into fixed-size token blocks; each block's key hashes its tokens together with the key of the
block before it (a hash chain), so a block is only found again after exactly the same tokens. At a request the
longest run of stored blocks from the start is loaded — from the device tier, CPU memory, or local disk — and only
the rest is computed; the new complete blocks are then stored. The cache is exactly what a full prefill would
hold: reuse changes time, never the output. The store lives for the run (and, with a disk tier, across runs),
shared by all episodes and turns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cachebench.engine.session import KVSession, Phase
from cachebench.models.loaded import LoadedModel
from cachebench.params import param
from cachebench.reuse.storage import StoreBackedMethod, StoreParams, stack_layers, timed_get
from cachebench.reuse.store import KVBlock, chain_key


@dataclass(frozen=True)
class PrefixParams(StoreParams):
    block_tokens: int = param(64, "tokens per hashed block (vLLM uses 16, LMCache 256)", low=1)


class PrefixCache(StoreBackedMethod):
    name = "prefix"
    summary = "reuse the longest stored prefix of hash-chained KV blocks from a device/CPU/disk store"
    Params = PrefixParams

    def attach(self, model: LoadedModel) -> None:
        self.open_store_for(model, f"prefix-{self.params.block_tokens}")

    def prefill(self, session: KVSession, token_ids: Sequence[int], phase: Phase) -> torch.Tensor:
        if phase != "context" or session.position != 0:
            return session.forward(token_ids, phase)
        size = self.params.block_tokens
        keys = self._chain(token_ids, len(token_ids) // size)
        loaded: list[KVBlock] = []
        # at least one token is computed: its logits are the prefill's answer
        for index, key in enumerate(keys[: (len(token_ids) - 1) // size]):
            found = timed_get(self.store, key, token_ids[index * size : (index + 1) * size], session)
            if found is None:
                break
            loaded.append(found[0])
        if loaded:
            stacked_keys = torch.cat([block.keys for block in loaded], dim=2)
            stacked_values = torch.cat([block.values for block in loaded], dim=2)
            for layer in range(stacked_keys.shape[0]):
                session.cache.update(stacked_keys[layer].unsqueeze(0), stacked_values[layer].unsqueeze(0), layer)
            session.position = len(loaded) * size
        logits = session.forward(token_ids[session.position :], phase)
        self._store_new_blocks(session, token_ids, keys, len(loaded))
        return logits

    def _chain(self, token_ids: Sequence[int], blocks: int) -> list[str]:
        size, keys, parent = self.params.block_tokens, [], None
        for index in range(blocks):
            parent = chain_key(parent, token_ids[index * size : (index + 1) * size], self.store.namespace)
            keys.append(parent)
        return keys

    def _store_new_blocks(self, session: KVSession, token_ids: Sequence[int], keys: list[str], first: int) -> None:
        size = self.params.block_tokens
        layers = session.cache.layers
        for index in range(first, len(keys)):
            span = slice(index * size, (index + 1) * size)
            block = KVBlock(
                stack_layers([layer.keys for layer in layers], span.start, span.stop),
                stack_layers([layer.values for layer in layers], span.start, span.stop),
                tuple(token_ids[span]),
                {"first_position": str(index * size)},
            )
            self.store.put(keys[index], block)
