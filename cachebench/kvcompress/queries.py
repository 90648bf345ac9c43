"""Queries recomputed from an attention layer's input, as the layer itself computed them.

The default sdpa attention never exposes its queries or weights, so methods that score tokens by attention
recompute the queries of the few tokens they need (an observation window) from the hidden states the hook saw.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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


@dataclass
class WindowInputs:
    """The last few tokens' attention inputs of one layer, kept so their queries can be recomputed later."""

    hidden: torch.Tensor  # (batch, tokens, hidden)
    cos: torch.Tensor
    sin: torch.Tensor

    @classmethod
    def tail_of(cls, hidden: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor], size: int
                ) -> WindowInputs:
        cos, sin = position_embeddings
        return cls(hidden[:, -size:].clone(), cos[:, -size:].clone(), sin[:, -size:].clone())

    def extended(self, newer: WindowInputs, size: int) -> WindowInputs:
        """This window followed by newer tokens, cut to the last `size`."""
        return WindowInputs(
            torch.cat([self.hidden, newer.hidden], dim=1)[:, -size:],
            torch.cat([self.cos, newer.cos], dim=1)[:, -size:],
            torch.cat([self.sin, newer.sin], dim=1)[:, -size:],
        )

    def queries(self, module: torch.nn.Module) -> torch.Tensor:
        return project_queries(module, self.hidden, self.cos, self.sin)
