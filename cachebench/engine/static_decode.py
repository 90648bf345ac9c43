"""Decode over static per-layer KV buffers: the shape-stable step a CUDA graph can capture and replay.

Eager decode on a GPU is bound by kernel launches, so a smaller cache decodes no faster (issue 8). A captured graph
needs every shape and address fixed: here each layer's keys and values live in a buffer of `capacity` entries
(the cache's largest layer plus the tokens to generate, rounded up to a bucket), the number of live entries per
layer and the true position are device tensors, and one step writes the new entry with `index_copy_` and attends
over the buffer with a mask that hides the unused tail. Layers may hold different lengths (PyramidKV, CAKE), so a
cache that an eviction method shrank decodes from buffers sized to what it kept: the bucket, not the context,
sets the attention's cost.

The step runs the decoder layer by layer from the model's own modules (norms, projections, rotary embedding,
MLP), as the reuse forward does, so its arithmetic is the model's. Methods that act during decode (H2O's
per-step eviction, TokenSelect's per-step selection) are not served here: their cache changes shape every step.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from cachebench.errors import UsageError
from cachebench.models.anatomy import UnsupportedDecoder, apply_rope, decoder_parts, raw_projection
from cachebench.models.loaded import LoadedModel

DEFAULT_BUCKET = 256


def bucketed(entries: int, bucket: int = DEFAULT_BUCKET) -> int:
    """The capacity a cache of `entries` needs, rounded up to a multiple of `bucket` (one graph per bucket)."""
    return max(bucket, -(-entries // bucket) * bucket)


class StaticDecoder:
    """Greedy-decode steps of one model over static buffers loaded from a (possibly evicted) cache."""

    def __init__(self, model: LoadedModel, capacity: int, batch: int = 1) -> None:
        self.model = model
        try:
            self.parts = decoder_parts(model.model)
        except UnsupportedDecoder as exc:
            raise UsageError(f"{model.name}: static decode {exc}") from None
        self.capacity = capacity
        self.batch = batch
        config = model.config
        layers = len(self.parts.layers)
        shape = (batch, self.parts.kv_heads, capacity, self.parts.head_dim)
        device, dtype = model.device, model.dtype
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(layers)]
        self.lengths = torch.zeros(layers, dtype=torch.long, device=device)  # live entries per layer
        self.position = torch.zeros(1, dtype=torch.long, device=device)  # true position of the next token
        self.slots = torch.arange(capacity, device=device)
        self.token = torch.zeros((batch, 1), dtype=torch.long, device=device)  # the step's input (static)
        self.vocab = config.vocab_size

    def load(self, cache: Any, position: int) -> None:
        """Copy a transformers cache's layers into the buffers; `position` is the next token's true position."""
        for index, layer in enumerate(cache.layers):
            length = layer.keys.shape[-2]
            if length >= self.capacity:
                raise ValueError(f"layer {index} holds {length} entries; the buffers hold {self.capacity}")
            self.keys[index][:, :, :length].copy_(layer.keys)
            self.values[index][:, :, :length].copy_(layer.values)
            self.lengths[index] = length
        self.position.fill_(position)

    def step(self) -> torch.Tensor:
        """One decode step for `self.token`: writes each layer's new entry, returns the logits (batch, vocab).
        Only tensor operations on fixed shapes, so a CUDA graph can capture it."""
        parts = self.parts
        hidden = parts.embed(self.token)
        cos, sin = parts.rotary(hidden, self.position.view(1, 1).expand(self.batch, 1))
        for index, layer in enumerate(parts.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(hidden)
            q = apply_rope(raw_projection(attn, x, "q"), cos, sin)
            k = apply_rope(raw_projection(attn, x, "k"), cos, sin)
            v = attn.v_proj(x).view(self.batch, 1, -1, parts.head_dim).transpose(1, 2)
            slot = self.lengths[index : index + 1]
            self.keys[index].index_copy_(2, slot, k)
            self.values[index].index_copy_(2, slot, v)
            visible = (self.slots <= slot).view(1, 1, 1, self.capacity)
            out = F.scaled_dot_product_attention(q, self.keys[index], self.values[index], attn_mask=visible,
                                                 scale=attn.scaling, enable_gqa=True)
            hidden = hidden + attn.o_proj(out.transpose(1, 2).reshape(self.batch, 1, -1))
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        self.lengths.add_(1)
        self.position.add_(1)
        return parts.lm_head(parts.norm(hidden))[:, -1]

    def generate(self, first: torch.Tensor, steps: int) -> list[int]:
        """Greedy tokens after `first` (batch 1), eagerly: the reference a captured graph must match."""
        tokens = [int(first)]
        for _ in range(steps):
            self.token.fill_(tokens[-1])
            tokens.append(int(self.step()[0].argmax()))
        return tokens


class CapturedStep:
    """A StaticDecoder's step captured once as a CUDA graph; `replay` runs it for whatever `decoder.token` holds.

    Capture needs a warm-up on a side stream first (allocator and kernel selection); the warm-up's writes land in
    the slot the first real step overwrites, and the live lengths and position are put back before and after.
    """

    def __init__(self, decoder: StaticDecoder) -> None:
        if decoder.model.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        self.decoder = decoder
        lengths, position = decoder.lengths.clone(), decoder.position.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                decoder.step()
                decoder.lengths.copy_(lengths)
                decoder.position.copy_(position)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = decoder.step()
        decoder.lengths.copy_(lengths)
        decoder.position.copy_(position)

    def replay(self) -> torch.Tensor:
        """One decode step (the graph also advances the lengths and the position); the logits (batch, vocab)."""
        self.graph.replay()
        return self.logits

    def generate(self, first: torch.Tensor, steps: int) -> list[int]:
        """Greedy tokens after `first` (batch 1) by graph replay."""
        tokens = [int(first)]
        for _ in range(steps):
            self.decoder.token.fill_(tokens[-1])
            tokens.append(int(self.replay()[0].argmax()))
        return tokens
