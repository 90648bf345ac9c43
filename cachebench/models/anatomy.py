"""A decoder's anatomy: where a transformers decoder keeps its parts, how its attention computes queries and keys,
and how many bytes its keys and values take.

Several layers of cachebench reach inside the model: the session hooks every attention module, eviction methods
recompute an observation window's queries (sdpa never exposes them), the reuse forward and static decode run the
decoder layer by layer from its own modules, and measurement counts a cache's bytes. This is the one place that
knows those parts, at the bottom of the package, so engine, kvcompress, reuse and perf need not import each other
for them. It imports only torch and the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

# the modules of a Llama-style decoder layer that a layer-by-layer forward calls
LAYER_PARTS = ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")


def decoder_of(net: torch.nn.Module) -> torch.nn.Module:
    """The decoder stack (embeddings, layers, final norm) inside a causal LM."""
    return net.get_decoder() if hasattr(net, "get_decoder") else net.model


def attention_modules(net: torch.nn.Module) -> list[torch.nn.Module]:
    """The self-attention module of each decoder layer, in layer order."""
    return [layer.self_attn for layer in decoder_of(net).layers]


class UnsupportedDecoder(ValueError):
    """The model is not a Llama-style decoder with full attention in every layer; the message says what it lacks
    (callers put the model's name and their purpose in front)."""


@dataclass
class DecoderParts:
    """The modules of a Llama-style decoder, found once per model."""

    embed: torch.nn.Module
    layers: list[torch.nn.Module]
    norm: torch.nn.Module
    lm_head: torch.nn.Module
    rotary: torch.nn.Module
    kv_heads: int
    head_dim: int


def decoder_parts(net: torch.nn.Module) -> DecoderParts:
    """The modules a layer-by-layer forward of `net` (a causal LM) calls; UnsupportedDecoder for architectures
    such a forward would not reproduce (sliding windows, other layer layouts, per-layer rotary embeddings)."""
    decoder = decoder_of(net)
    config = net.config
    layer_types = set(getattr(config, "layer_types", None) or ["full_attention"])
    if layer_types != {"full_attention"} or getattr(config, "use_sliding_window", False):
        has = ", ".join(sorted(layer_types))
        raise UnsupportedDecoder(f"needs full attention in every layer (this model has {has})")
    layers = list(getattr(decoder, "layers", []))
    if not layers or any(not all(hasattr(layer, part) for part in LAYER_PARTS) for layer in layers):
        raise UnsupportedDecoder(f"supports Llama-style decoder layers ({', '.join(LAYER_PARTS)})")
    if not hasattr(decoder, "rotary_emb"):
        raise UnsupportedDecoder("needs a model-level rotary embedding")
    return DecoderParts(
        embed=decoder.embed_tokens,
        layers=layers,
        norm=decoder.norm,
        lm_head=net.get_output_embeddings(),
        rotary=decoder.rotary_emb,
        kv_heads=config.num_key_value_heads,
        head_dim=layers[0].self_attn.head_dim,
    )


# --- attention arithmetic --------------------------------------------------------------------------------------------

def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (batch, heads, tokens, head_dim) states by RoPE (cos, sin of shape (batch, tokens, head_dim))."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return states * cos + rotate_half(states) * sin


def raw_projection(module: torch.nn.Module, hidden: torch.Tensor, kind: str = "q") -> torch.Tensor:
    """Pre-RoPE queries (kind "q") or keys ("k"), (batch, heads, tokens, head_dim), of a Llama-style attention
    module, with the per-head norm Qwen3-style models apply before RoPE."""
    batch, tokens, _ = hidden.shape
    states = getattr(module, f"{kind}_proj")(hidden).view(batch, tokens, -1, module.head_dim)
    norm = getattr(module, f"{kind}_norm", None)
    if norm is not None:
        states = norm(states)
    return states.transpose(1, 2)


def project_queries(
    module: torch.nn.Module, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> torch.Tensor:
    """Post-RoPE queries (batch, q_heads, tokens, head_dim), as the layer computed them."""
    return apply_rope(raw_projection(module, hidden, "q"), cos, sin)


def project_keys(module: torch.nn.Module, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Post-RoPE keys (batch, kv_heads, tokens, head_dim), as the layer computed them."""
    return apply_rope(raw_projection(module, hidden, "k"), cos, sin)


# --- sizes -----------------------------------------------------------------------------------------------------------

def head_dim(config: Any) -> int:
    """Dimensions per attention head (configs that omit `head_dim` split the hidden size evenly)."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def kv_bytes_per_token(config: Any, dtype: torch.dtype, layers: int | None = None) -> int:
    """Bytes one token's uncompressed keys and values take in `layers` layers (every layer by default)."""
    count = config.num_hidden_layers if layers is None else layers
    return count * 2 * config.num_key_value_heads * head_dim(config) * dtype.itemsize


def tensor_bytes(obj: Any) -> int:
    """Bytes held by the tensors of a cache layer (any attribute that is a tensor or a list/tuple of them)."""
    total = 0
    for value in vars(obj).values():
        if isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
        elif isinstance(value, (list, tuple)):
            total += sum(v.numel() * v.element_size() for v in value if isinstance(v, torch.Tensor))
    return total


def cache_bytes(cache: Any) -> int:
    """Bytes of every tensor in a transformers Cache, layer by layer (what a method left after it acted)."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        return tensor_bytes(cache)
    return sum(tensor_bytes(layer) for layer in layers)
