"""`tokenselect`: dynamic token-level KV selection at each decoding step (Wu, Pan, Fu, Wang, Chen, Bai, Wang, Wang and
Xiong, 2024/2025, "TokenSelect: Efficient Long-Context Inference and Length Extrapolation for LLMs via Dynamic
Token-Level KV Cache Selection", arXiv:2411.02886, EMNLP 2025).

Nothing is evicted: the whole cache stays in memory, and each decode step's attention runs over a few critical
tokens gathered from it, so attention compute shrinks while `kv_bytes` stays that of `full`. Per layer and step:

  - criticality: the step's query (every query head) dotted with the cached keys of its KV head (GQA);
  - per-head soft vote: each head's scores are softmax-normalised over the candidate tokens, then summed over all
    query heads, so no single head with large logits dominates; the top-k tokens of the sum are selected once per
    layer and shared by all heads (the paper selects at token level, not per head, to keep paged kernels simple);
  - always kept: the first `initial` tokens and the `local` most recent ones (the current token included);
  - Selection Cache: the flattened query is compared (cosine) with the query of the layer's last fresh selection;
    at `similarity` or above, that selection's top-k tokens are reused and scoring is skipped.

The budget is the number of cache entries a step attends to, `params.kept(L)` for a layer holding L entries after
the step's append (ratio or absolute budget, like the eviction methods; the paper fixes k), of which `initial` and
`local` are reserved and the rest are chosen by the vote. Selection cost is kept on the instance:
`selection_ms_total` (host time of query projection, scoring and top-k, device synchronised), `selection_steps`
(layer-steps that attended to a selection), `reused_selections` (those served by the Selection Cache) and
`dense_steps` (layer-steps whose budget covered the whole cache, so attention stayed full). The gather itself runs
inside the layer's attention and is counted in the decode time, not in `selection_ms_total`. The compression setting
(query-agnostic or query-aware) changes nothing here: selection happens per decode step, with every prompt cached.

Departures from the paper, and why:
  - Context and question prefills use full attention (the paper also selects per chunk of a chunked prefill): this
    benchmark compares methods on the decode-time cache, and the brief keeps prefill exact.
  - Scores use the post-RoPE queries and keys the model attends with (HF caches keys after RoPE); the official
    SGLang code keeps keys unrotated and rotates inside the kernel for its length-extrapolation mode. As there,
    logits are raw dot products (no 1/sqrt(d)) before the per-head softmax.
  - The Selection Cache compares pre-RoPE queries, as the official code does (its queries are unrotated): RoPE turns
    fast-rotating pairs by about a radian per step, which would make consecutive queries look different for
    position alone. The cached query is the one of the last fresh selection, as in the official code.
  - The optional max-pooling of the vote in the official code, and its fused paged dot-product kernel, are left out.
  - Budgets are scaled down to the 512-token contexts used here (paper: 128 initial, 512 local, k = 2048).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import DynamicLayer

from cachebench.engine.session import LayerCall
from cachebench.kvcompress.budget import BudgetParams
from cachebench.kvcompress.prune import gather_tokens, top_k_sorted
from cachebench.method import KVMethod
from cachebench.models.anatomy import apply_rope, raw_projection
from cachebench.params import param

STATE_KEY = "tokenselect"


@dataclass(frozen=True)
class TokenSelectParams(BudgetParams):
    initial: int = param(8, "first cache entries every decode step attends to (attention sinks)", low=0)
    local: int = param(32, "most recent entries every decode step attends to, the current token included", low=1)
    similarity: float = param(0.9, "Selection Cache: reuse the last selection while the query's cosine similarity "
                                   "to the query that made it is at least this", low=-1.0, high=1.0)
    reuse: bool = param(True, "enable the Selection Cache")


def soft_vote(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Per-head soft vote: (batch, M) = sum over query heads of softmax over M of q . k.

    `queries` (batch, q_heads, n, d) are averaged over their n tokens (a single one when decoding); `keys`
    (batch, kv_heads, M, d) serve q_heads // kv_heads consecutive query heads each, as in the model's attention.
    """
    query = queries.float().mean(dim=2)  # (batch, q_heads, d)
    batch, q_heads, dim = query.shape
    kv_heads = keys.shape[1]
    grouped = query.view(batch, kv_heads, q_heads // kv_heads, dim)
    logits = torch.matmul(grouped, keys.float().transpose(-1, -2))  # (batch, kv_heads, group, M)
    return torch.softmax(logits, dim=-1).sum(dim=(1, 2))


def step_plan(total: int, budget: int, initial: int, local: int) -> tuple[int, int, int] | None:
    """(initial, top_k, local) entries a step attends to when the layer holds `total` entries after the append
    (local counts the current token), or None when the budget covers everything and attention stays full."""
    if budget >= total:
        return None
    n_init = min(initial, budget - 1)
    n_local = min(local, budget - n_init)
    return n_init, budget - n_init - n_local, n_local


def vote_top_k(queries: torch.Tensor, past_keys: torch.Tensor, n_init: int, top_k: int, n_local: int
               ) -> torch.Tensor:
    """Indices (batch, top_k), ascending, of the voted tokens among the past entries between the initial and the
    local ones (`n_local` counts the current token, which is not among `past_keys`)."""
    stop = past_keys.shape[2] - (n_local - 1)
    scores = soft_vote(queries, past_keys[:, :, n_init:stop])
    return top_k_sorted(scores, top_k) + n_init


def attended_indices(top: torch.Tensor, past: int, n_init: int, n_local: int) -> torch.Tensor:
    """All past entries a step attends to, (batch, n_init + top_k + n_local - 1), ascending."""
    batch, device = top.shape[0], top.device
    head = torch.arange(n_init, device=device).expand(batch, n_init)
    tail = torch.arange(past - (n_local - 1), past, device=device).expand(batch, n_local - 1)
    return torch.cat([head, top, tail], dim=-1)


class SelectiveLayer(DynamicLayer):
    """A full cache layer whose next `update` may return only some entries (plus the new ones) for attention.

    The whole cache is still appended to and held; `pending` is set by the method right before the layer's
    attention and consumed by that update, so no index tensor stays on the layer (kv_bytes counts its tensors).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pending: torch.Tensor | None = None  # (batch, n) past indices to attend to on the next update

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
        chosen, self.pending = self.pending, None
        if chosen is None:
            return super().update(key_states, value_states, *args, **kwargs)
        heads = self.keys.shape[1]
        index = chosen.unsqueeze(1).expand(-1, heads, -1)
        keys = torch.cat([gather_tokens(self.keys, index), key_states], dim=-2)
        values = torch.cat([gather_tokens(self.values, index), value_states], dim=-2)
        super().update(key_states, value_states, *args, **kwargs)
        return keys, values


class TokenSelect(KVMethod):
    name = "tokenselect"
    summary = ("Per-step token selection by per-head soft vote of Q.K, with a Selection Cache; the full cache is "
               "kept, attention uses the selected tokens (Wu et al., 2024).")
    Params = TokenSelectParams
    uses_layer_hook = True
    fixed_cache_while_decoding = False  # selects tokens anew at every step

    def __init__(self, params: TokenSelectParams) -> None:
        super().__init__(params)
        self.selection_ms_total = 0.0
        self.selection_steps = 0
        self.reused_selections = 0
        self.dense_steps = 0

    def new_cache(self, model: Any) -> Any:
        cache = super().new_cache(model)
        cache.layers = [SelectiveLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
        return cache

    def before_layer(self, call: LayerCall) -> None:
        memory = call.state.setdefault(STATE_KEY, {})
        if call.phase != "decode":
            memory.pop(call.layer_idx, None)  # new prompt tokens: the next decode selects afresh
            return
        layer = call.cache.layers[call.layer_idx]
        if not isinstance(layer, SelectiveLayer) or layer.keys is None or call.position_embeddings is None:
            return
        past = layer.keys.shape[-2]
        new = call.hidden_states.shape[1]
        plan = step_plan(past + new, self.params.kept(past + new), self.params.initial, self.params.local)
        if plan is None or new != 1:
            self.dense_steps += 1
            return
        start = self._now(layer.keys.device)
        n_init, top_k, n_local = plan
        with torch.no_grad():
            raw = raw_projection(call.module, call.hidden_states, "q")
            rotated = apply_rope(raw, *call.position_embeddings)
            fingerprint = raw.float().mean(dim=2).flatten(1)  # (batch, q_heads * d)
            held = memory.get(call.layer_idx)
            if self._reusable(held, fingerprint, n_init):
                top = held["top"]
                self.reused_selections += 1
            else:
                top = vote_top_k(rotated, layer.keys, n_init, top_k, n_local)
                memory[call.layer_idx] = {"query": fingerprint, "top": top, "initial": n_init}
            layer.pending = attended_indices(top, past, n_init, n_local)
        call.attention_mask = None  # one query over gathered entries: every one is visible
        self.selection_steps += 1
        self.selection_ms_total += self._now(layer.keys.device) - start

    def _reusable(self, held: dict[str, Any] | None, fingerprint: torch.Tensor, n_init: int) -> bool:
        if not self.params.reuse or held is None or held["initial"] != n_init:
            return False
        similarity = torch.nn.functional.cosine_similarity(fingerprint, held["query"], dim=-1)
        return bool((similarity >= self.params.similarity).all())

    @staticmethod
    def _now(device: torch.device) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() * 1000.0
