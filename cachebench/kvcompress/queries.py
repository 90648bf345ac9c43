"""An observation window's attention inputs, kept so its queries can be recomputed as the layer computed them.

The default sdpa attention never exposes its queries or weights, so methods that score tokens by attention
recompute the queries of the few tokens they need (an observation window) from the hidden states the hook saw
(the projection itself: cachebench.models.anatomy).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cachebench.models.anatomy import project_queries


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
