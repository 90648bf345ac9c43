"""`chelsea`: cluster the cache chunk by chunk with bipartite soft matching and keep one centroid per cluster (Hu,
Wang, He, Gong, Yi, Zhang, Bai, Chen, Zhang, Li and Yuan, 2025, "Efficient Long-Context LLM Inference via KV Cache
Clustering", arXiv:2506.11418, "Chelsea").

Per layer and KV head, on the entries being compressed (all but the first `sinks` and the newest `window`, which
stay as they are):

  1. The entries are cut into consecutive chunks of about `chunk` entries, and each chunk gets its share of the
     target, in proportion to its length (every chunk at least one entry).
  2. Chunked Soft Matching, inside each chunk, repeated until the chunk holds its share: the chunk's current
     entries are split alternately into A (1st, 3rd, 5th, ...) and B (2nd, 4th, ...); each A entry is matched to
     the B entry whose key is most cosine-similar to its own; the r best-matched pairs (r = what the chunk must
     still lose, at most |A|) are merged, each A entry folding into its B match (several may fold into one B).
     This is the bipartite soft matching of ToMe (Bolya et al., 2023, arXiv:2210.09461) run per chunk.
  3. Each cluster's keys and values become one centroid, the mean of every token it contains: a merge weighs
     each side by the number of tokens it already stands for, so the result does not depend on the order of the
     rounds. The centroid is held at its B entry's place.

Every entry carries that number (`cachebench.kvcompress.merge.SizedLayer`), so a later turn's compression
weighs earlier centroids right. With `proportional` (default), attention counts a centroid of s tokens s times:
log(s) is added to its attention logits, as ToMe's proportional attention does. Keys are merged as the cache
stores them, after RoPE.

What could be read of the paper, and where a choice was made:
  - Only the abstract and introduction of arXiv:2506.11418v1 could be read here, and reading notes of others;
    the method section could not. The abstract fixes the frame: chunks, an alternating partition inside each,
    clusters found by (key) similarity, each cluster merged into a single centroid.
  - The centroid as the size-weighted mean, and the log(size) correction of attention, follow a secondary
    summary of the paper ("K merged into centroids with V, attention corrected by log N"); neither is confirmed
    from the paper's own text. `proportional=false` leaves attention uncorrected.
  - The chunk size (64) and the split of the target among chunks (proportional to length, by cumulative floors)
    are ours; the paper's defaults were not readable.
  - `sinks` (4, as StreamingLLM keeps: Xiao et al., 2023, arXiv:2309.17453) are ours. Without them, at ratio
    0.5 nearly every A entry merges each round, the first token (the attention sink) with it, and on
    multiturn.passkey (query-agnostic) the embedded model answered every question with its system prompt ("You
    are a very helpful AI assistant named ...").
  - A: odd-numbered entries of the chunk (1st, 3rd, ...), B: even-numbered, and A folds into B, as ToMe does; the
    r pairs merged per round are the r most similar (stable on ties: the earlier A entry first).
  - GQA: clustering is per KV head; the log(size) bias is applied to every query head of the KV head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from cachebench.engine.session import LayerCall
from cachebench.kvcompress.budget import BudgetParams
from cachebench.kvcompress.evictor import EvictionMethod
from cachebench.kvcompress.merge import Plan, SizedLayer, merge_layer, size_bias_mask
from cachebench.kvcompress.queries import WindowInputs
from cachebench.params import param


@dataclass(frozen=True)
class ChelseaParams(BudgetParams):
    window: int = param(32, "most recent entries kept unmerged", low=0)
    sinks: int = param(4, "first entries kept unmerged (attention sinks)", low=0)
    chunk: int = param(64, "entries per chunk: clusters form only inside a chunk", low=2)
    proportional: bool = param(True, "attention counts a centroid as many times as the tokens it merges "
                                     "(+ log size on its logits)")


def chunk_shares(lengths: list[int], slots: int) -> list[int]:
    """Entries each chunk keeps: one each, and the other slots - chunks shared in proportion to the chunks'
    lengths beyond one by cumulative floors (they sum to `slots`; each at most its chunk's length)."""
    extra, room = slots - len(lengths), sum(lengths) - len(lengths)
    shares, before, cumulative = [], 0, 0
    for length in lengths:
        cumulative += length - 1
        upto = extra * cumulative // room if room else 0
        shares.append(1 + upto - before)
        before = upto
    return shares


def soft_matching(keys: torch.Tensor, sizes: torch.Tensor, share: int) -> torch.Tensor:
    """One chunk's clusters: the index (into keys (c, d)) of the entry each entry ends up merged into, after
    rounds of alternating-partition soft matching bring the c entries to `share`. Cluster keys are compared as
    their size-weighted centroids (sizes (c,): tokens each entry already stands for)."""
    count = keys.shape[0]
    centroid = keys.float().clone()
    weight = sizes.float().clone()
    into = torch.arange(count, device=keys.device)  # each entry -> the surviving entry holding it
    alive = torch.arange(count, device=keys.device)
    while alive.numel() > share:
        side_a, side_b = alive[0::2], alive[1::2]
        r = min(side_a.numel(), alive.numel() - share)
        similarity = F.normalize(centroid[side_a], dim=-1) @ F.normalize(centroid[side_b], dim=-1).T
        best, match = similarity.max(dim=-1)
        chosen = torch.sort(best, descending=True, stable=True).indices[:r]
        source, target = side_a[chosen], side_b[match[chosen]]
        total = weight.index_add(0, target, weight[source])
        summed = (centroid * weight.unsqueeze(-1)).index_add(0, target, centroid[source] * weight[source, None])
        centroid[target] = summed[target] / total[target].unsqueeze(-1)
        weight = total
        remap = torch.arange(count, device=keys.device)
        remap[source] = target
        into = remap[into]
        gone = torch.zeros(count, dtype=torch.bool, device=keys.device)
        gone[source] = True
        alive = alive[~gone[alive]]
    return into


def chelsea_plan(keys: torch.Tensor, sizes: torch.Tensor, slots: int, chunk: int) -> Plan:
    """One head's plan: keys (n, d) with sizes (n,) brought to `slots` centroids (1 <= slots < n) by chunked soft
    matching; each token weighs its size over its cluster's total (the centroid is the mean of the tokens)."""
    n = keys.shape[0]
    pieces = max(1, min(-(-n // chunk), slots))
    bounds = [n * j // pieces for j in range(pieces + 1)]
    lengths = [bounds[j + 1] - bounds[j] for j in range(pieces)]
    into = torch.empty(n, dtype=torch.long, device=keys.device)
    for j, share in enumerate(chunk_shares(lengths, slots)):
        lo, hi = bounds[j], bounds[j + 1]
        into[lo:hi] = lo + soft_matching(keys[lo:hi], sizes[lo:hi], share)
    survivors = torch.unique(into)
    slot_of = torch.full((n,), -1, dtype=torch.long, device=keys.device)
    slot_of[survivors] = torch.arange(survivors.numel(), device=keys.device)
    owner = slot_of[into]
    mass = sizes.float()
    total = torch.zeros(survivors.numel(), device=keys.device).index_add_(0, owner, mass)
    return owner, mass / total[owner]


class Chelsea(EvictionMethod):
    name = "chelsea"
    summary = "Chunked bipartite soft matching of keys; each cluster's KV merged into its centroid (Hu et al., 2025)."
    Params = ChelseaParams
    uses_queries = False
    # static decode buffers cannot carry the per-entry log(size) bias of proportional attention
    fixed_cache_while_decoding = False

    def new_cache(self, model: Any) -> DynamicCache:
        cache = DynamicCache(config=model.config)
        cache.layers = [SizedLayer() for _ in cache.layers]
        return cache

    def before_layer(self, call: LayerCall) -> None:
        """Proportional attention: + log(size) on the logits of every centroid the layer holds."""
        layer = call.cache.layers[call.layer_idx]
        sizes = getattr(layer, "sizes", None)
        if not self.params.proportional or sizes is None or not bool((sizes > 1).any()):
            return
        hidden = call.hidden_states  # float32 keeps log(size) exact on CPU; GPU kernels want the query's dtype
        dtype = torch.float32 if hidden.device.type == "cpu" else hidden.dtype
        call.attention_mask = size_bias_mask(sizes, call.module.config.num_attention_heads, hidden.shape[1],
                                             hidden.device, dtype)

    def compress(self, call: LayerCall, end: int, window_inputs: WindowInputs | None) -> None:
        """Bring the layer's first `end` entries to the target per KV head by clustering (the newest `window` of
        them and every entry after `end` untouched)."""
        keep = self.target_for(call, end)
        if end <= keep:
            return
        layer = call.cache.layers[call.layer_idx]
        recent = min(self.params.window, keep - 1)
        sinks = min(self.params.sinks, keep - 1 - recent)
        start, stop, slots = sinks, end - recent, keep - recent - sinks
        sizes = layer.ensure_sizes()
        plans = [[chelsea_plan(layer.keys[b, h, start:stop], sizes[b, h, start:stop], slots, self.params.chunk)
                  for h in range(layer.keys.shape[1])] for b in range(layer.keys.shape[0])]
        merge_layer(layer, start, stop, plans, slots)
