"""`windowkv`: keep whole windows of consecutive tokens, chosen per task type and shared within groups of layers
(Zuo, Wei, Zhang, Liu, Lu and Song, 2025, "WindowKV: Task-Adaptive Group-Wise KV Cache Window Selection for
Efficient LLM Inference", arXiv:2503.17922; details as in the authors' release, github.com/optim996/WindowKV).

The tokens before the observation window (the last `window` tokens, always kept) are cut, from the start, into
review windows of `review_window` consecutive tokens (the last one may be shorter). The observation window's
attention, summed over its queries, scores each token; a review window's score averages over all query heads
either all its tokens' scores ("average") or the top half of them ("max"). The best windows are kept whole, so the
kept cache stays made of locally coherent spans instead of scattered tokens, and every KV head keeps the same spans.

Task adaptivity (the paper classifies the input with a fine-tuned bert-base-cased into "qa" and "other"):
  localization  (question answering: the answer sits in a few places)  -> "max" scoring, observation window 32
  aggregation   (summaries, code, few-shot: gather the whole input)     -> "average" scoring, observation window 16
So what the task type changes is the window scoring and the observation window; the review window is 8 tokens for
both (the release's Llama-3 script: review_window_size 8, suffix_max 32, suffix_avg 16, shared_layers 8; its demo
maps "qa" to "max"). `task_type` picks one explicitly and `window` / `review_window` override the sizes. "auto"
stands in for the classifier, whose trained checkpoint is not available and would be a second model: it reads the
first and last 256 tokens (the classifier's truncation) of the text the compression may see - the context alone in
the query-agnostic setting, the context and first question in the query-aware one - and says aggregation when that
text asks for a summary or overview, localization otherwise. It is decided once per cache, at its first
compression (before the forward that compresses), and kept for the cache's later turns.

Intra-group layer KV index sharing: layers form groups of `group_size` (8) consecutive layers; the first layer of a
group scores and selects, the others reuse its indices, which is valid because the members of a group always hold
the same number of entries (same budget, same history). Budgets fall from group to group like the release's
"arithmetic" schedule: the last group's selected budget is group_size/beta of the average (beta 14) and the first
the mirror amount; the observation window is added on top, and the layer-weighted mean is the uniform budget
(rounded down, so never above it).

Departures: the release drops the ceil((n - budget) / review_window) lowest windows, which keeps up to
review_window - 1 entries fewer than the budget (or more, when the short last window is dropped); here the best
windows are kept whole and the budget is filled exactly with the leading part of the next best window, so every
method is compared at the same size. The release's budget schedule assumes the layers divide into groups; here a
shorter last group is allowed and the schedule is re-centred so the layer-weighted mean stays exact, and its spread
is limited so no group needs more entries than the prompt holds. Scores are computed in float32 and per batch row.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from cachebench.engine.session import KVSession, LayerCall, Phase
from cachebench.kvcompress.attention import window_attention
from cachebench.kvcompress.budget import BudgetParams
from cachebench.kvcompress.evictor import EvictionMethod
from cachebench.params import param

TASKS = {"localization": ("max", 32), "aggregation": ("average", 16)}  # task -> (window scoring, observation window)
CLASSIFIER_SPAN = 256  # the paper's classifier reads the first and last 256 tokens of a long input
_AGGREGATION_CUES = re.compile(r"summar|overview|总结|摘要|概括", re.IGNORECASE)
STATE_KEY = "windowkv"


@dataclass(frozen=True)
class WindowKVParams(BudgetParams):
    task_type: str = param("auto", "localization: max scoring, window 32; aggregation: average, window 16; auto: "
                                   "aggregation if the prompt asks for a summary", choices=("auto", *TASKS))
    review_window: int = param(8, "consecutive tokens per review window (the unit that is kept or dropped)", low=1)
    window: int | None = param(None, "observation window, always kept (default: 32 localization, 16 aggregation)",
                               low=1)
    group_size: int = param(8, "consecutive layers sharing the first layer's selected indices", low=1)
    beta: float = param(14.0, "budget steepness across groups: the last group keeps group_size/beta of the average "
                              "selected budget (0: uniform)", low=0.0)


def classify_task(text: str) -> str:
    """The stand-in for the paper's task classifier: aggregation when the text asks for a summary/overview."""
    return "aggregation" if _AGGREGATION_CUES.search(text) else "localization"


def window_scores(keys: torch.Tensor, queries: torch.Tensor, review_window: int, strategy: str,
                  scaling: float | None = None) -> torch.Tensor:
    """Score of each review window (batch, windows): the observation window's attention onto the tokens before it,
    summed over its queries, then averaged over query heads and the window's tokens (all, or the top half)."""
    w, length = queries.shape[2], keys.shape[2]
    review = length - w
    votes = window_attention(queries, keys, scaling)[..., :review].sum(dim=2)  # (batch, q_heads, review)
    full, rest = divmod(review, review_window)
    per_window = []
    if full:
        per_window.append(_reduce(votes[..., : full * review_window].unflatten(-1, (full, review_window)), strategy,
                                  review_window))
    if rest:
        per_window.append(_reduce(votes[..., full * review_window:].unsqueeze(-2), strategy, review_window))
    return torch.cat(per_window, dim=-1).mean(dim=1)  # (batch, windows)


def _reduce(windows: torch.Tensor, strategy: str, review_window: int) -> torch.Tensor:
    """(batch, heads, n, size) -> (batch, heads, n): mean of all scores, or of the top review_window // 2."""
    if strategy == "average":
        return windows.mean(dim=-1)
    top = min(max(1, review_window // 2), windows.shape[-1])
    return windows.topk(top, dim=-1).values.mean(dim=-1)


def select_windows(scores: torch.Tensor, review: int, review_window: int, budget: int) -> torch.Tensor:
    """Indices (batch, budget), ascending, among `review` tokens: the best windows whole, in score order, then the
    leading tokens of the next best one to fill the budget exactly."""
    order = scores.argsort(dim=-1, descending=True, stable=True)  # ties: the earlier window first
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    token = torch.arange(review, device=scores.device)
    token_rank = rank[:, token // review_window] * review_window + token % review_window
    return token_rank.argsort(dim=-1)[:, :budget].sort(dim=-1).values


def windowkv_keep(keys: torch.Tensor, queries: torch.Tensor, keep: int, review_window: int = 8,
                  strategy: str = "max", scaling: float | None = None) -> torch.Tensor:
    """WindowKV's selection: indices (batch, kv_heads, keep) among the L entries of `keys`, the same for every KV
    head: the selected review windows plus the observation window (the newest `keep` entries when keep <= w)."""
    batch, kv_heads, length = keys.shape[:3]
    w = queries.shape[2]
    if keep <= w:
        index = torch.arange(length - keep, length, device=keys.device).expand(batch, keep)
    else:
        scores = window_scores(keys, queries, review_window, strategy, scaling)
        chosen = select_windows(scores, length - w, review_window, keep - w)
        tail = torch.arange(length - w, length, device=keys.device).expand(batch, w)
        index = torch.cat([chosen, tail], dim=-1)
    return index.unsqueeze(1).expand(batch, kv_heads, index.shape[-1])


def group_budgets(average: int, window: int, layers: int, group_size: int, beta: float, length: int) -> list[int]:
    """Entries kept per layer (window included), equal within a group and falling arithmetically across groups,
    with a layer-weighted mean of `average`."""
    selected = average - window
    groups = math.ceil(layers / group_size)
    if selected <= 0 or groups == 1 or beta <= 0:
        return [average] * layers
    low = min(selected, selected * group_size / beta)
    spread = max(0.0, min(selected - low, length - average))  # first group: selected + spread <= length - window
    sizes = [min(group_size, layers - g * group_size) for g in range(groups)]
    slopes = [1 - 2 * g / (groups - 1) for g in range(groups)]
    shift = spread * sum(n * t for n, t in zip(sizes, slopes, strict=True)) / layers
    per_group = [window + max(0, math.floor(selected + spread * t - shift)) for t in slopes]  # floor: never over
    return [per_group[layer // group_size] for layer in range(layers)]


class WindowKV(EvictionMethod):
    name = "windowkv"
    summary = ("Task-adaptive selection of whole token windows, indices shared within layer groups "
               "(Zuo et al., 2025).")
    Params = WindowKVParams

    def __init__(self, params: WindowKVParams) -> None:
        super().__init__(params)
        self._task = "localization" if params.task_type == "auto" else params.task_type

    @property
    def window(self) -> int:
        return self.params.window or TASKS[self._task][1]

    def prefill(self, session: KVSession, token_ids: Sequence[int], phase: Phase) -> torch.Tensor:
        """Decide the task type before the forward that first compresses (from the text it may see)."""
        state = session.state.setdefault(STATE_KEY, {"task": None, "seen": [], "shared": {}})
        if state["task"] is None:
            if self.params.task_type != "auto":
                state["task"] = self.params.task_type
            else:
                state["seen"] = _head_and_tail([*state["seen"], *token_ids])
                if not session.query_aware or phase != "context":
                    state["task"] = classify_task(session.model.tokenizer.decode(state["seen"]))
        self._task = state["task"] or self._task
        return super().prefill(session, token_ids, phase)

    def select(self, call: LayerCall, keys: torch.Tensor, queries: torch.Tensor | None, keep: int) -> torch.Tensor:
        state: dict[str, Any] = call.state.setdefault(STATE_KEY, {"task": None, "seen": [], "shared": {}})
        group = call.layer_idx // self.params.group_size
        stamp = (int(call.positions[0]), keys.shape[2], keep)  # this forward, this length, this budget
        shared = state["shared"].get(group)
        if call.layer_idx % self.params.group_size and shared is not None and shared[0] == stamp:
            return shared[1]
        strategy = TASKS[state["task"] or self._task][0]
        chosen = windowkv_keep(keys, queries, keep, self.params.review_window, strategy,
                               getattr(call.module, "scaling", None))
        state["shared"][group] = (stamp, chosen)
        return chosen

    def layer_target(self, call: LayerCall, reference: int) -> int:
        layers = call.module.config.num_hidden_layers
        budgets = group_budgets(self.params.kept(reference), self.window, layers, self.params.group_size,
                                self.params.beta, reference)
        return max(1, min(reference, budgets[call.layer_idx]))


def _head_and_tail(ids: list[int]) -> list[int]:
    return ids if len(ids) <= 2 * CLASSIFIER_SPAN else ids[:CLASSIFIER_SPAN] + ids[-CLASSIFIER_SPAN:]
