"""A decoder forward that can reuse stored keys/values and compute only some tokens, layer by layer.

Chunk-reuse methods (naive concatenation, KVLink, CacheBlend) need what a plain transformers forward cannot give:
the pre-RoPE keys of every layer (so a stored chunk can be placed at any position), and a forward in which the set
of tokens being computed shrinks between layers (CacheBlend recomputes only the tokens whose KV deviates most).
This module runs a Llama-style decoder itself — embeddings, then per layer norm, q/k/v projections, RoPE, attention
over the layer's whole key set, output projection, MLP — from the model's own modules, so the arithmetic is the
model's; with every token computed at every layer it reproduces the plain forward (tested to fp tolerance). The
parts themselves are found by cachebench.models.anatomy.decoder_parts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cachebench.models.anatomy import DecoderParts, apply_rope, raw_projection


@dataclass
class ReusedKV:
    """Stored keys/values laid out over the tokens being prefilled; rows of `present` tokens hold data."""

    raw_keys: torch.Tensor  # (layers, kv_heads, tokens, head_dim), pre-RoPE
    values: torch.Tensor  # (layers, kv_heads, tokens, head_dim)
    present: torch.Tensor  # (tokens,) bool: True where the row came from a store


@dataclass
class ForwardResult:
    """Per-layer keys (post-RoPE) and values of every token, what was computed, and the last token's logits."""

    keys: list[torch.Tensor]  # each (1, kv_heads, tokens, head_dim)
    values: list[torch.Tensor]
    raw_keys: list[torch.Tensor] | None  # pre-RoPE keys, when asked for (to store chunks)
    logits: torch.Tensor | None  # (vocab,), None when the last token was not computed at the last layer
    recomputed: torch.Tensor  # (tokens,) bool: reused tokens that were computed through every layer


def _attend(
    attn: torch.nn.Module,
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    query_pos: torch.Tensor,
    key_pos: torch.Tensor,
    causal_block: bool,
) -> torch.Tensor:
    """Causal attention of the computed tokens' queries over the layer's whole key set (by true positions)."""
    scale = getattr(attn, "scaling", 1.0 / math.sqrt(q.shape[-1]))
    groups = q.shape[1] // keys.shape[1]
    if groups > 1:
        keys = keys.repeat_interleave(groups, dim=1)
        values = values.repeat_interleave(groups, dim=1)
    if causal_block:  # every token computed, in position order: the ordinary causal square
        return F.scaled_dot_product_attention(q, keys, values, is_causal=True, scale=scale)
    mask = key_pos.unsqueeze(0) <= query_pos.unsqueeze(1)
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale)


def _project(
    attn: torch.nn.Module, x: torch.Tensor, kv_heads: int, head_dim: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pre-RoPE queries and keys, and values, of the computed tokens: (1, heads, tokens, head_dim)."""
    q_raw = raw_projection(attn, x, "q")
    k_raw = raw_projection(attn, x, "k")
    v = attn.v_proj(x).view(1, x.shape[1], kv_heads, head_dim).transpose(1, 2)
    return q_raw, k_raw, v


def _deviation(k_raw: torch.Tensor, v: torch.Tensor, reused: ReusedKV, layer: int) -> torch.Tensor:
    """CacheBlend's KV deviation per token: squared distance between computed and stored keys and values.

    Keys are compared before RoPE: rotation preserves distances, so this equals comparing them at the new
    positions."""
    dk = (k_raw[0].float() - reused.raw_keys[layer].float()).pow(2).sum(dim=(0, 2))
    dv = (v[0].float() - reused.values[layer].float()).pow(2).sum(dim=(0, 2))
    return dk + dv


def selective_forward(
    parts: DecoderParts,
    ids: torch.Tensor,
    positions: torch.Tensor,
    reused: ReusedKV | None = None,
    always: torch.Tensor | None = None,
    check_layer: int | None = None,
    recompute_ratio: float = 0.0,
    keep_raw_keys: bool = False,
) -> ForwardResult:
    """Prefill `ids` (1-D) at `positions` into an empty cache, reusing stored KV where `reused` has it.

    Without `reused`, every token is computed at every layer: a plain prefill. With it, tokens in `always` (new
    text, the query, the last token) and tokens without stored KV are computed at every layer; the other tokens:
      - check_layer None: never computed; their stored KV is used as is (naive reuse, KVLink);
      - check_layer c: computed at layers 0..c; at layer c the `recompute_ratio` share of them whose computed KV
        deviates most from the stored KV is kept computing through the remaining layers, the rest keep their
        stored KV from layer c+1 on (CacheBlend's selective recompute).
    """
    count = ids.shape[0]
    device = ids.device
    hidden = parts.embed(ids.unsqueeze(0))
    cos_all, sin_all = parts.rotary(hidden, positions.unsqueeze(0))
    computed_mask = torch.ones(count, dtype=torch.bool, device=device)
    if reused is not None:
        always = always if always is not None else torch.zeros(count, dtype=torch.bool, device=device)
        always = always | ~reused.present
        if check_layer is None:
            computed_mask = always.clone()
    active = computed_mask.nonzero().squeeze(1)
    hidden = hidden[:, active]
    recomputed = torch.zeros(count, dtype=torch.bool, device=device)
    keys_out: list[torch.Tensor] = []
    values_out: list[torch.Tensor] = []
    raw_out: list[torch.Tensor] | None = [] if keep_raw_keys else None
    for index, layer in enumerate(parts.layers):
        attn = layer.self_attn
        x = layer.input_layernorm(hidden)
        q_raw, k_raw, v = _project(attn, x, parts.kv_heads, parts.head_dim)
        cos, sin = cos_all[:, active], sin_all[:, active]
        q = apply_rope(q_raw, cos, sin)
        everything = active.shape[0] == count
        if everything:
            layer_raw, layer_v = k_raw, v
        else:
            layer_raw = reused.raw_keys[index].unsqueeze(0).clone()
            layer_v = reused.values[index].unsqueeze(0).clone()
            layer_raw[:, :, active] = k_raw
            layer_v[:, :, active] = v
        layer_keys = apply_rope(layer_raw, cos_all, sin_all)
        out = _attend(attn, q, layer_keys, layer_v, positions[active], positions, everything)
        out = attn.o_proj(out.transpose(1, 2).reshape(1, active.shape[0], -1))
        hidden = hidden + out
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        keys_out.append(layer_keys)
        values_out.append(layer_v)
        if raw_out is not None:
            raw_out.append(layer_raw)
        if reused is not None and check_layer is not None and index == check_layer and everything:
            keep = _select(_deviation(k_raw, v, reused, index), always, recompute_ratio)
            recomputed = keep & ~always
            hidden = hidden[:, keep]
            active = keep.nonzero().squeeze(1)
    logits = None
    if active.numel() and int(active[-1]) == count - 1:
        logits = parts.lm_head(parts.norm(hidden[:, -1:]))[0, -1]
    return ForwardResult(keys_out, values_out, raw_out, logits, recomputed)


def _select(deviation: torch.Tensor, always: torch.Tensor, ratio: float) -> torch.Tensor:
    """Tokens to keep computing: `always`, plus the top `ratio` of the other tokens by deviation."""
    candidates = ~always
    quota = math.ceil(ratio * int(candidates.sum()))
    keep = always.clone()
    if quota > 0:
        scores = deviation.masked_fill(always, float("-inf"))
        keep[torch.topk(scores, quota).indices] = True
    return keep
