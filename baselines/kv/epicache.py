"""`epicache`: episodic KV caches for long conversations under a fixed budget (Kim et al., 2025, "EpiCache: Episodic
KV Cache Management for Long Conversational Question Answering", arXiv:2509.17396). Written from the paper.

1. Episodes. The history is cut into segments of `segment_lines` utterances, embedded with a sentence encoder
   (MiniLM by default) and clustered by k-means into `episodes` episodes; the segments nearest each centroid
   (`medoids` of them) form that episode's patched prompt.
2. Block-wise prefill. For each episode the whole history is fed in blocks of `block` tokens, each followed by the
   episode's patched prompt; right after a layer wrote the block, the patch's queries score every held entry
   (window attention pooled along the sequence, as SnapKV scores) and the layer keeps its best `target` entries,
   dropping the patch's own. A layer never holds more than its target plus one block plus the patch, whatever the
   history's length: peak KV memory is bounded (`peak_kv_bytes` in the rows). The `recent` latest context tokens
   are always kept, because the question continues the prompt they end.
3. Layer-wise budgets. Once per run, before the first context (untimed, the paper's offline calibration), each
   layer's sensitivity to block-wise eviction is measured on the start of that context: 1 - cosine similarity of
   the keys a full prefill and a block-wise evicting prefill compute for the same final block. The total budget
   (layers x the uniform target) is then shared by sensitivity ** `alpha` above a floor
   (`allocation=uniform` turns this off).
4. Routing. A question is embedded with the same encoder and answered from the cache of the episode whose centroid
   is nearest; the chosen cache is copied in (the load a serving system would do from where episodes are kept).
   In multi-turn mode the first question picks the episode and later turns continue in that cache.

The budget is a fraction removed (`ratio`) of the history's length or an absolute `budget`, per layer on average,
so `ratio=0.75` keeps 25% as SnapKV's does. The row's `kv_bytes` is the routed cache; the other episodes' caches
(episodes - 1 more of the same size) are what the paper keeps off the accelerator. Prefill time includes the
clustering and one block-wise pass per episode.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from cachebench.engine.session import KVSession, LayerCall, Phase
from cachebench.kvcompress.budget import BudgetParams
from cachebench.kvcompress.episodes import cluster_episodes, segments_of
from cachebench.kvcompress.layer_budget import allocate, key_sensitivity
from cachebench.kvcompress.prune import keep_in_layer, keep_top_and_window
from cachebench.kvcompress.queries import WindowInputs
from cachebench.method import KVMethod
from cachebench.models.loaded import LoadedModel
from cachebench.params import param

from .snapkv import snapkv_scores

STATE_KEY = "epicache"
SCORING_WINDOW = 32  # without a patch (the calibration pass), a block's own last tokens score, as in SnapKV


@dataclass(frozen=True)
class EpiCacheParams(BudgetParams):
    block: int = param(512, "block-wise prefill: tokens fed between two evictions", low=1)
    episodes: int = param(4, "episodes (k-means clusters of the history), one compressed cache each", low=1)
    segment_lines: int = param(4, "utterances (non-empty lines) per embedded segment", low=1)
    medoids: int = param(2, "segments nearest an episode's centroid that form its patched prompt", low=1)
    patch_tokens: int = param(256, "longest patched prompt, in tokens (its start is kept)", low=1)
    recent: int = param(16, "latest context tokens always kept", low=0)
    kernel: int = param(7, "pooling kernel along the sequence for the patch's attention (odd)", low=1)
    allocation: str = param("sensitivity", "layer budgets: by measured sensitivity to eviction, or uniform",
                            choices=("sensitivity", "uniform"))
    alpha: float = param(1.0, "sharpness of the sensitivity allocation (0: uniform above the floor)", low=0.0,
                         high=10.0)
    floor: float = param(0.25, "least budget a layer gets, as a fraction of the uniform target", low=0.0, high=1.0)
    calibration_tokens: int = param(2048, "context tokens the sensitivity calibration runs on", low=2)
    embedder: str = param("embedded", "sentence-transformers model for segments and questions (embedded: MiniLM)")
    seed: int = param(0, "k-means seed")


@dataclass
class _Step:
    """What the layer hook needs while one block (and the patch after it) goes through the model."""

    patch: int  # trailing tokens that only score: dropped after scoring
    block: int  # context tokens in this block
    targets: Sequence[int]  # entries each layer keeps
    capture: dict[int, torch.Tensor] | None = None  # calibration: the block's keys per layer, before eviction


class EpiCache(KVMethod):
    name = "epicache"
    summary = ("Episodic caches: block-wise prefill under a budget, one cache per conversation episode, questions "
               "routed to the nearest (Kim et al., 2025).")
    Params = EpiCacheParams
    uses_layer_hook = True
    fixed_cache_while_decoding = False  # the question picks the episode's cache

    def __init__(self, params: EpiCacheParams) -> None:
        super().__init__(params)
        self._encoder: Any = None
        self.sensitivity: list[float] | None = None  # per layer, once calibrated (reported by the benchmark)

    def attach(self, model: LoadedModel) -> None:
        from cachebench.semantic.embedder import load_embedder

        self._encoder = load_embedder(self.params.embedder)

    # -- the three depths the runner calls ------------------------------------------------------------------

    def stage(self, session: KVSession, context_ids: Sequence[int]) -> None:
        if self.params.allocation == "sensitivity" and self.sensitivity is None:
            self._calibrate(session, list(context_ids[: self.params.calibration_tokens]))

    def prefill(self, session: KVSession, token_ids: Sequence[int], phase: Phase) -> torch.Tensor:
        if phase == "context":
            return self._build_episode_caches(session, list(token_ids))
        if phase == "query":
            self._route(session, token_ids)
        return session.forward(token_ids, phase)

    def on_layer(self, call: LayerCall) -> None:
        step = call.state.get(STATE_KEY, {}).get("step") if call.phase == "context" else None
        if step is None:
            return
        layer = call.cache.layers[call.layer_idx]
        total = layer.keys.shape[-2]
        held = total - step.patch  # entries of the context (kept ones and the new block)
        if step.capture is not None:
            step.capture[call.layer_idx] = layer.keys[:, :, held - step.block : held].clone()
        keep = step.targets[call.layer_idx]
        if held <= keep:
            if step.patch:  # drop the patch's entries only
                layer.keys = layer.keys[:, :, :held].contiguous()
                layer.values = layer.values[:, :, :held].contiguous()
            return
        keep_in_layer(layer, self._select(call, layer.keys, held, step.patch, keep))

    # -- stages -----------------------------------------------------------------------------------------------

    def _select(self, call: LayerCall, keys: torch.Tensor, held: int, patch: int, keep: int) -> torch.Tensor:
        """Indices (batch, kv_heads, keep) among the `held` context entries, scored by the patch's queries (or,
        without a patch, by the block's own last tokens, which are then kept)."""
        window = patch or min(SCORING_WINDOW, call.hidden_states.shape[1], held)
        queries = WindowInputs.tail_of(call.hidden_states, call.position_embeddings, window).queries(call.module)
        scores = snapkv_scores(keys, queries, self.params.kernel, "avg", getattr(call.module, "scaling", None))
        if not patch:
            return keep_top_and_window(scores, held, keep)
        recent = min(self.params.recent, keep, held)
        return keep_top_and_window(scores[..., : held - recent], held, keep)

    def _blockwise(self, session: KVSession, ids: list[int], targets: Sequence[int], patch_ids: list[int],
                   capture: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        """Feed `ids` block by block, each block followed by the patch, evicting to `targets` after each."""
        state = session.state.setdefault(STATE_KEY, {})
        logits = None
        for start in range(0, len(ids), self.params.block):
            chunk = ids[start : start + self.params.block]
            last = start + self.params.block >= len(ids)
            state["step"] = _Step(len(patch_ids), len(chunk), targets, capture if last else None)
            logits = session.forward(chunk + patch_ids, "context")
            session.position -= len(patch_ids)  # the patch only scored: the next block continues the context
        state["step"] = None
        return logits

    def _targets(self, layers: int, context: int) -> list[int]:
        average = self.params.kept(context)
        if self.sensitivity is None:
            return [average] * layers
        weights = [s ** self.params.alpha for s in self.sensitivity]
        return allocate(average, weights, floor=round(self.params.floor * average), cap=context)

    def _build_episode_caches(self, session: KVSession, ids: list[int]) -> torch.Tensor:
        tokenizer = session.model.tokenizer
        text = tokenizer.decode(ids, skip_special_tokens=True)
        episodes = cluster_episodes(segments_of(text, self.params.segment_lines), self._encoder,
                                    self.params.episodes, self.params.medoids, self.params.seed)
        targets = self._targets(session.model.config.num_hidden_layers, len(ids))
        caches = []
        logits = None
        for patch_text in episodes.patches:
            session.reset_cache()
            patch_ids = tokenizer(patch_text, add_special_tokens=False)["input_ids"][: self.params.patch_tokens]
            logits = self._blockwise(session, ids, targets, patch_ids)
            caches.append(session.cache)
        session.state[STATE_KEY] = {"step": None, "episodes": episodes, "caches": caches, "routed": None,
                                    "targets": targets}
        session.cache = caches[0]
        session.position = len(ids)
        return logits

    def _route(self, session: KVSession, token_ids: Sequence[int]) -> None:
        state = session.state.get(STATE_KEY)
        if not state or state.get("routed") is not None:
            return
        question = session.model.tokenizer.decode(list(token_ids), skip_special_tokens=True).strip()
        episode = state["episodes"].route(self._encoder.encode([question])[0])
        state["routed"] = episode
        session.cache = copy.deepcopy(state["caches"][episode])

    def _calibrate(self, session: KVSession, ids: list[int]) -> None:
        """Each layer's sensitivity to block-wise eviction, from the keys of the final block."""
        if len(ids) < 2 * self.params.block:
            return  # too short to evict anything block-wise: uniform until a longer context comes
        layers = session.model.config.num_hidden_layers
        full = session.fresh()
        full.forward(ids, "context")
        last_block = len(ids) - (len(ids) - 1) // self.params.block * self.params.block
        evicted = session.fresh()
        captured: dict[int, torch.Tensor] = {}
        self._blockwise(evicted, ids, [self.params.kept(len(ids))] * layers, [], captured)
        self.sensitivity = [
            key_sensitivity(full.cache.layers[i].keys[:, :, -last_block:], captured[i]) for i in range(layers)
        ]
