"""`pyramidkv`: SnapKV's selection with per-layer budgets that shrink with depth (Cai et al., 2024, "PyramidKV:
Dynamic KV Cache Compression based on Pyramidal Information Funneling", arXiv:2406.02069).

Lower layers attend broadly and higher layers focus on a few tokens, so the budget (beyond the always-kept
observation window) falls arithmetically from layer 0 to the last layer: the last layer gets 1/beta of the
average and layer 0 the mirror amount, so the mean over layers equals the uniform budget.
"""

from __future__ import annotations

from dataclasses import dataclass

from cachebench.engine.session import LayerCall
from cachebench.params import param

from .snapkv import SnapKV, SnapKVParams


@dataclass(frozen=True)
class PyramidKVParams(SnapKVParams):
    beta: float = param(20.0, "steepness: the last layer keeps 1/beta of the average selected budget", low=1.0)


def pyramid_budgets(average: int, window: int, layers: int, beta: float) -> list[int]:
    """Entries kept per layer (window included) whose mean is `average`; uniform when the window uses it all."""
    selected = average - window
    if selected <= 0 or layers == 1:
        return [average] * layers
    low = selected / beta
    high = 2 * selected - low
    steps = [high - (high - low) * layer / (layers - 1) for layer in range(layers)]
    return [window + round(step) for step in steps]


class PyramidKV(SnapKV):
    """SnapKV's score; only the per-layer targets differ."""

    name = "pyramidkv"
    summary = "SnapKV scoring with pyramid-shaped per-layer budgets, largest at the bottom (Cai et al., 2024)."
    Params = PyramidKVParams

    def layer_target(self, call: LayerCall, reference: int) -> int:
        layers = call.module.config.num_hidden_layers
        budgets = pyramid_budgets(self.params.kept(reference), self.window, layers, self.params.beta)
        return max(1, min(reference, budgets[call.layer_idx]))
