"""Shared machinery of the chunk-reuse methods (naive concatenation, KVLink, CacheBlend).

A chunked context (retrieved documents) is laid out as text the method always computes (the prompt's start, the
joiners between documents, the end) and chunks whose KV is encoded once on its own, stored position-free (keys
before RoPE), and at use placed at the chunk's new positions. The methods differ in how a chunk was encoded
(behind the prompt's start, or alone) and in what they compute again when they reuse it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from cachebench.engine.session import KVSession, Phase, Segment
from cachebench.errors import UsageError
from cachebench.models.anatomy import DecoderParts, UnsupportedDecoder, decoder_parts
from cachebench.models.loaded import LoadedModel
from cachebench.params import param
from cachebench.reuse.forward import ReusedKV, selective_forward
from cachebench.reuse.storage import StoreBackedMethod, StoreParams, stack_layers, timed_get
from cachebench.reuse.store import KVBlock, content_key


@dataclass(frozen=True)
class ChunkParams(StoreParams):
    chunking: str = param(
        "task",
        "chunk separator policy: the task's documents (the joiners between them are computed as new text; "
        "flat contexts are cut into fixed blocks), or always fixed blocks",
        choices=("task", "fixed"),
    )
    chunk_tokens: int = param(256, "block size when a context is cut into fixed chunks", low=16)
    precompute: bool = param(
        True,
        "encode an episode's missing chunks before its timed prefill, as the papers "
        "assume documents were encoded offline; false: misses are encoded inside the prefill",
    )


def fixed_layout(length: int, block: int) -> tuple[Segment, ...]:
    """A flat context cut into blocks: the first is the prompt's start (always computed), the rest reusable."""
    segments = [Segment(0, min(block, length), False)]
    segments += [Segment(start, min(start + block, length), True) for start in range(block, length, block)]
    return tuple(segments)


def chunk_layout(session: KVSession, length: int, chunking: str, block: int) -> tuple[Segment, ...]:
    if chunking == "task" and session.segments:
        return session.segments
    return fixed_layout(length, block)


class ChunkReuseMethod(StoreBackedMethod):
    """Encode chunks once, store them, and prefill a context from stored chunks plus whatever must be computed."""

    Params: ClassVar[type] = ChunkParams
    encode_behind_head: ClassVar[bool] = True  # encode a chunk after the prompt's start (else alone from 0)

    def __init__(self, params: Any) -> None:
        super().__init__(params)
        self._parts: DecoderParts | None = None

    # what subclasses choose
    def recompute_plan(self) -> tuple[int | None, float]:
        """(check layer, recompute ratio) for selective_forward; (None, 0.0) reuses stored KV as is."""
        return None, 0.0

    def attach(self, model: LoadedModel) -> None:
        try:
            self._parts = decoder_parts(model.model)
        except UnsupportedDecoder as exc:
            raise UsageError(f"{model.name}: chunk reuse {exc}") from None
        check_layer, _ = self.recompute_plan()
        if check_layer is not None and check_layer >= len(self._parts.layers):
            raise UsageError(
                f"{self.name}: check_layer {check_layer} but {model.name} has {len(self._parts.layers)} layers"
            )
        self.open_store_for(model, "chunk-behind-head" if self.encode_behind_head else "chunk-alone")

    def _head(self, context_ids: Sequence[int], layout: Sequence[Segment]) -> list[int]:
        first = layout[0]
        if not self.encode_behind_head or first.reusable:
            return []
        return list(context_ids[first.start : first.end])

    def _key(self, chunk: Sequence[int], head: Sequence[int]) -> str:
        head_digest = content_key(head, self.store.namespace) if head else "alone"
        return content_key(chunk, self.store.namespace, head_digest)

    def _encode(self, chunk: Sequence[int], head: Sequence[int]) -> KVBlock:
        """A chunk's KV encoded on its own (behind `head` when given), keys before RoPE."""
        device = self._parts.embed.weight.device
        ids = torch.tensor([*head, *chunk], dtype=torch.long, device=device)
        result = selective_forward(self._parts, ids, torch.arange(ids.shape[0], device=device), keep_raw_keys=True)
        start = len(head)
        return KVBlock(
            stack_layers(result.raw_keys, start, ids.shape[0]),
            stack_layers(result.values, start, ids.shape[0]),
            tuple(chunk),
            {"encoded_at": str(start), "head_tokens": str(len(head))},
        )

    def _chunks(self, session: KVSession, context_ids: Sequence[int]) -> tuple[list[int], list[tuple[Segment, str]]]:
        """The encoding head, and each reusable chunk with its store key."""
        layout = chunk_layout(session, len(context_ids), self.params.chunking, self.params.chunk_tokens)
        head = self._head(context_ids, layout)
        keyed = [(seg, self._key(context_ids[seg.start : seg.end], head)) for seg in layout if seg.reusable]
        return head, keyed

    def stage(self, session: KVSession, context_ids: Sequence[int]) -> None:
        if not self.params.precompute:
            return
        head, keyed = self._chunks(session, context_ids)
        for seg, key in keyed:
            if self.store.contains(key) is None:
                self.store.put(key, self._encode(context_ids[seg.start : seg.end], head))

    def prefill(self, session: KVSession, token_ids: Sequence[int], phase: Phase) -> torch.Tensor:
        if phase != "context" or session.position != 0:
            return session.forward(token_ids, phase)
        parts = self._parts
        device = parts.embed.weight.device
        length = len(token_ids)
        head, keyed = self._chunks(session, token_ids)
        shape = (len(parts.layers), parts.kv_heads, length, parts.head_dim)
        dtype = parts.embed.weight.dtype
        raw_keys = torch.zeros(shape, dtype=dtype, device=device)
        values = torch.zeros(shape, dtype=dtype, device=device)
        present = torch.zeros(length, dtype=torch.bool, device=device)
        for seg, key in keyed:
            chunk = token_ids[seg.start : seg.end]
            found = timed_get(self.store, key, chunk, session)
            if found is None:  # a miss costs the chunk's own encoding now, then it is stored for later requests
                block = self._encode(chunk, head)
                self.store.put(key, block)
            else:
                block = found[0]
            raw_keys[:, :, seg.start : seg.end] = block.keys
            values[:, :, seg.start : seg.end] = block.values
            present[seg.start : seg.end] = True
        always = ~present
        always[-1] = True  # the context's last token gives the logits
        check_layer, ratio = self.recompute_plan()
        ids = torch.tensor(list(token_ids), dtype=torch.long, device=device)
        result = selective_forward(
            parts,
            ids,
            torch.arange(length, device=device),
            ReusedKV(raw_keys, values, present),
            always,
            check_layer,
            ratio,
        )
        for index, (keys, vals) in enumerate(zip(result.keys, result.values, strict=True)):
            session.cache.update(keys, vals, index)
        session.position = length
        session.reuse.recomputed_tokens += int(result.recomputed.sum())
        return result.logits
