"""`minicache`: merge adjacent layers' KV caches in depth (Liu et al., 2024, "MiniCache: KV Cache Compression in Depth
Dimension for Large Language Models", arXiv:2405.14366).

From a middle layer S on, adjacent layers are merged in pairs: (S, S+1), (S+2, S+3), ... while both exist. For every
token and KV head, the pair's keys (and, separately, values) are split into magnitude and direction; the two
directions are merged by SLERP at `t` and stored once for both layers, each layer keeping its own magnitudes, and a
layer is restored as x̂ = ‖x‖·e. Entries whose two directions lie far apart (angular distance in the top `gamma` of
the range over the merged tokens) are retained: their original vectors for both layers are stored with their
positions and restored exactly. The arithmetic and the storage are in cachebench/kvcompress/cross_layer.py.

When it merges. MiniCache uses no queries; the suite's two settings decide only when the context is merged:
  query-agnostic  each pair's context entries are merged as the context prefill finishes, in the attention hook of
                  the pair's upper layer (the lower layer's entries are already in the cache then).
  query-aware     the context stays unmerged until the first question's forward, which merges context and question.
Entries written later (a follow-up prompt, decoded tokens) are appended unmerged to each layer's tail. The tail is
merged at the next prompt forward: under query-agnostic the entries held before that prompt (the previous question
and reply), the new prompt staying unmerged until the prompt after it, so no retention range is ever computed with a
question the compression may not see; under query-aware everything held, the new prompt included. Decoding never
merges, so a reply's own tokens are held whole while it is generated.

The paper's premise is that adjacent middle-to-deep layers hold similar KV states. On the embedded SmolLM2-135M it
does not hold per KV head: the mean angular distance between adjacent layers' keys or values is about 0.5 (nearly
orthogonal), so merging changes its answers (tests/test_kv_minicache.py measures it against the full cache).

Departures from the paper, and why (its method section could not be read here: the pairing, the SLERP weights and the
storage layout follow the authors' figures and project page and the KVCache-Factory re-implementation; the retention
rule follows the paper's prose, see below):
  - Pairs. The first merged layer is `start_layer` (default num_layers // 2, the paper's middle layer), merged with
    the layer above it, as the authors' layer-similarity figure pairs layers (2k, 2k+1); with an odd number of layers
    from S, the last layer stays unmerged. `start_layer` = the last layer therefore merges nothing (the full cache).
  - Retention. We retain a token when d > d_max − γ·(d_max − d_min): the top γ of the distance range, which is what
    "keep highly distinct pairs unmerged at minimal extra storage" with γ = 0.05 implies. d_min and d_max are taken
    per KV head over the tokens merged together (the paper works with whole states per layer), and keys and values
    each have their own retained set.
  - Storage. The merged directions, magnitudes and retained originals are kept in the cache's dtype; retained
    positions as int32; the shared direction is stored for every merged token, retained or not, as the paper's
    merged cache is. The pair's shared tensors are held by its lower layer (the paper stores them at the upper
    one; which layer holds them changes no byte, only which layer the per-layer peak accounting charges).
    Nothing is quantized (the paper combines MiniCache with 4-bit KIVI for its largest ratios; this is MiniCache
    alone).
  - Decoding. The paper merges each new token's KV as it is decoded; here decoded tokens stay unmerged until the next
    prompt forward (above), so the reported cache of a turn includes its reply unmerged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import DynamicCache

from cachebench.engine.session import LayerCall, causal_mask_for
from cachebench.kvcompress.cross_layer import MergedLayer, distinct_bytes, merge_tails
from cachebench.method import KVMethod
from cachebench.params import param


@dataclass(frozen=True)
class MiniCacheParams:
    start_layer: int | None = param(None, "first merged layer, merged with the one above it, and every second layer "
                                    "after (None: num_layers // 2)", low=0)
    t: float = param(0.6, "SLERP interpolation towards the upper layer of a pair", low=0.0, high=1.0)
    gamma: float = param(0.05, "retention threshold: tokens in the top gamma of the angular-distance range stay "
                         "unmerged", low=0.0, high=1.0)


def merged_pairs(num_layers: int, start: int) -> list[tuple[int, int]]:
    """The (lower, upper) layer pairs merged when merging starts at layer `start`."""
    return [(lower, lower + 1) for lower in range(start, num_layers - 1, 2)]


class MiniCache(KVMethod):
    name = "minicache"
    summary = "Adjacent deep layers share one SLERP direction per token, own magnitudes, outliers kept (Liu 2024)."
    Params = MiniCacheParams
    uses_layer_hook = True
    # a reply's tokens are appended to unmerged tails and the stored entries are not dense per layer: static decode
    # buffers loaded from `keys`/`values` would not hold what attention reads
    fixed_cache_while_decoding = False

    def start_for(self, num_layers: int) -> int:
        """The first merged layer of a model with `num_layers` layers."""
        start = self.params.start_layer
        return num_layers // 2 if start is None else start

    def check_config(self, config: Any) -> None:
        layers = int(config.num_hidden_layers)
        start = self.params.start_layer
        if start is not None and start >= layers:
            raise ValueError(f"start_layer={start} is beyond the model: it has {layers} layers (0..{layers - 1})")

    def new_cache(self, model: Any) -> DynamicCache:
        cache = DynamicCache(config=model.config)
        cache.layers = [MergedLayer() for _ in cache.layers]
        return cache

    def _upper_layers(self, call: LayerCall) -> dict[int, int]:
        """upper layer -> lower layer of every merged pair of this call's model."""
        config: Any = getattr(call.module, "config", None)
        layers = int(getattr(config, "num_hidden_layers", 0) or len(call.cache.layers))
        return {upper: lower for lower, upper in merged_pairs(layers, self.start_for(layers))}

    def before_layer(self, call: LayerCall) -> None:
        """A merged layer keeps its merged entries outside `keys`, so the session's mask repair (which reads
        `keys`) sizes the mask from the tail alone; size it again from every entry the layer holds."""
        layer = call.cache.layers[call.layer_idx]
        if isinstance(layer, MergedLayer) and layer.merged and call.attention_mask is not None:
            new = call.hidden_states.shape[1]
            call.attention_mask = causal_mask_for(layer.get_seq_length(), new, call.attention_mask)

    def on_layer(self, call: LayerCall) -> None:
        if call.phase == "decode":
            return
        lower_idx = self._upper_layers(call).get(call.layer_idx)
        if lower_idx is None:
            return
        lower, upper = call.cache.layers[lower_idx], call.cache.layers[call.layer_idx]
        held = upper.tail_length()
        if call.query_aware:
            if call.phase == "context":
                return  # merged with the first question
            count = held
        elif call.phase == "context":
            count = held
        else:  # a later prompt under query-agnostic: merge what was held before it, keep the prompt unmerged
            count = held - call.hidden_states.shape[1]
        merges = merge_tails(lower, upper, count, self.params.t, self.params.gamma)
        if merges is not None:  # what was merged, for inspection: entries, and (key, value) entries retained
            stats = call.state.setdefault("minicache", {}).setdefault(call.layer_idx, {"merged": 0, "retained": [0, 0]})
            stats["merged"] = upper.merged
            stats["retained"] = [so_far + int(m.kept_at.shape[1])
                                 for so_far, m in zip(stats["retained"], merges, strict=True)]

    def kv_bytes(self, cache: Any) -> int:
        """Every stored tensor once: the pair's shared directions are reachable from both of its layers."""
        return distinct_bytes(list(cache.layers))
