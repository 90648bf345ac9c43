"""`razorattention`: full cache for retrieval heads, sinks + recent window + one compensation token for the rest
(Tang et al., 2024, "RazorAttention: Efficient KV Cache Compression Through Retrieval Heads", arXiv:2407.15891).

Retrieval heads are found once per run (`attach`) with the paper's data-free probe for RoPE models: a random token
sequence repeated several times. Inside forward hooks on the attention modules, each query head's attention on the
probe is recomputed from its post-RoPE queries and keys; its *echo* score is the attention mass a token in a later
repeat puts on the same token in earlier repeats, its *induction* score the mass on the token that followed it there.
The top `induction` fraction of induction heads and the top `echo` fraction of echo heads (ranked over all query heads
of the model; the paper protects 14% and 1%) are retrieval heads. With GQA the cache is per KV head, so a KV head is
a retrieval head when ANY of the query heads sharing it is one.

Retrieval heads keep every entry. The other KV heads keep the first `sinks` tokens and a recent window; the entries
dropped in between are folded into one compensation token, the mean of their keys and the mean of their values, whose
attention weight counts `count` times (paper eq. 5): exp(q.k_hat) * count, i.e. an additive log(count) in the mask.
Later turns that push a compressed head past its window fold the newly dropped entries into the same token as a
running mean with the updated count.

The heads of one layer then hold different numbers of entries. They are stored without padding in `RazorLayer`
(retrieval heads in `keys`/`values`, compressed heads in `ckeys`/`cvalues`); `update` returns transient padded
tensors for the attention call only, and `before_layer` builds the per-head mask (padding masked, compensation biased).

Departures from the paper, and why:
  - Budget: the paper sizes the window as max(S0, N / C) with S0 = 4000 tokens; here the window is chosen so the
    average entries per KV head (retrieval heads full, compensation token counted) match `kept(reference)` like every
    other budgeted method. By default (`spread="model"`) the average runs over all KV heads of the model, giving one
    window for every non-retrieval head as in the paper; `spread="layer"` balances each layer on its own, which cannot
    hold where most of a layer's KV heads are retrieval heads (layers 20-24 and 26 of SmolLM2 at ratio 0.5). When the
    retrieval heads alone exceed the budget, the window falls to `min_window` and the cache holds more than asked.
  - Probe size: the paper repeats 2,500 random tokens 4 times; a CPU-sized default of 128 tokens x 4 is used (the
    scores are relative rankings, and the repeats are what matters).
  - GQA: the paper's models are scored per head; the KV-head rule above (any query head) is ours, so the share of
    KV heads kept whole exceeds the 15% of query heads (23 of 90 KV heads on SmolLM2).
  - The additive mask is float32 on CPU (log(count) exact); on GPU it takes the query's dtype for the sdpa kernels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from cachebench.engine.session import LayerCall
from cachebench.kvcompress.budget import BudgetParams
from cachebench.kvcompress.evictor import EvictionMethod, held_length
from cachebench.kvcompress.ragged import ragged_mask
from cachebench.models.anatomy import attention_modules, project_keys, project_queries
from cachebench.params import param


@dataclass(frozen=True)
class RazorParams(BudgetParams):
    sinks: int = param(4, "first tokens every non-retrieval head keeps (attention sinks)", low=0)
    induction: float = param(0.14, "fraction of query heads with the highest induction score kept whole", low=0.0,
                             high=1.0)
    echo: float = param(0.01, "fraction of query heads with the highest echo score kept whole", low=0.0, high=1.0)
    probe_tokens: int = param(128, "length of the random token sequence of the probe", low=2)
    probe_repeats: int = param(4, "times the random sequence is repeated in the probe", low=2)
    seed: int = param(0, "seed of the probe's random tokens")
    min_window: int = param(8, "smallest recent window of a non-retrieval head, whatever the budget", low=0)
    spread: str = param("model", "budget averaged over the whole model (one window for every non-retrieval head, as "
                        "in the paper) or per layer", choices=("model", "layer"))


# --- retrieval-head identification ---------------------------------------------------------------------------------

def probe_ids(vocab: int, special: set[int], tokens: int, repeats: int, seed: int, bos: int | None) -> list[int]:
    """The paper's probe: `tokens` random (non-special) ids repeated `repeats` times, after the BOS token if any."""
    gen = torch.Generator().manual_seed(seed)
    pool = torch.tensor([i for i in range(vocab) if i not in special])
    segment = pool[torch.randint(len(pool), (tokens,), generator=gen)].tolist()
    return ([bos] if bos is not None else []) + segment * repeats


def repetition_masks(length: int, offset: int, segment: int, device: torch.device | str = "cpu"
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean (rows, length) masks for the probe rows in later repeats (index offset + segment onwards): echo marks
    the same token in every earlier repeat, induction the token right after it."""
    rows = torch.arange(offset + segment, length, device=device).unsqueeze(1)
    cols = torch.arange(length, device=device).unsqueeze(0)
    earlier = (cols >= offset) & (cols < rows) & ((rows - cols) % segment == 0)
    echo = earlier
    induction = torch.zeros_like(earlier)
    induction[:, 1:] = earlier[:, :-1]
    return echo, induction


def probe_scores(queries: torch.Tensor, keys: torch.Tensor, offset: int, segment: int,
                 scaling: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Echo and induction scores (q_heads,) of one layer on the probe: mean over later-repeat rows of the attention
    mass on the echo / induction positions. queries (1, q_heads, T, d), keys (1, kv_heads, T, d), post-RoPE.
    Only the later-repeat rows are formed (the probe is short, so its attention may be explicit)."""
    length, q_heads = keys.shape[2], queries.shape[1]
    scale = scaling if scaling is not None else 1.0 / math.sqrt(queries.shape[-1])
    rows = queries[0, :, offset + segment:].float()
    full_keys = keys[0].float().repeat_interleave(q_heads // keys.shape[1], dim=0)
    logits = torch.matmul(rows, full_keys.transpose(-1, -2)) * scale  # (q_heads, rows, T)
    row_index = torch.arange(offset + segment, length, device=logits.device).unsqueeze(1)
    logits.masked_fill_(torch.arange(length, device=logits.device).unsqueeze(0) > row_index, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    echo, induction = repetition_masks(length, offset, segment, probs.device)
    return (probs * echo).sum(-1).mean(-1), (probs * induction).sum(-1).mean(-1)


def top_heads(scores: torch.Tensor, fraction: float) -> set[tuple[int, int]]:
    """(layer, query head) of the round(fraction * all) highest scores over the whole model (scores: layers x heads)."""
    count = round(fraction * scores.numel())
    if count <= 0:
        return set()
    flat = torch.topk(scores.flatten(), count).indices.tolist()
    return {(i // scores.shape[1], i % scores.shape[1]) for i in flat}


def retrieval_kv_heads(echo: torch.Tensor, induction: torch.Tensor, echo_fraction: float, induction_fraction: float,
                       kv_heads: int) -> dict[int, tuple[int, ...]]:
    """Retrieval KV heads per layer: a KV head is one when any query head it serves is a top echo or induction head."""
    groups = echo.shape[1] // kv_heads
    chosen = top_heads(echo, echo_fraction) | top_heads(induction, induction_fraction)
    return {layer: tuple(sorted({h // groups for (lay, h) in chosen if lay == layer}))
            for layer in range(echo.shape[0])}


def score_heads(model: Any, ids: list[int], offset: int, segment: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the probe once; hooks on every attention module score its query heads. Returns (layers, q_heads) x 2."""
    modules = attention_modules(model.model)
    echo: list[torch.Tensor | None] = [None] * len(modules)
    induction: list[torch.Tensor | None] = [None] * len(modules)

    def hook_for(idx: int):
        def hook(module, args, kwargs, output):
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            cos, sin = kwargs["position_embeddings"]
            queries = project_queries(module, hidden, cos, sin)
            keys = project_keys(module, hidden, cos, sin)
            echo[idx], induction[idx] = probe_scores(queries, keys, offset, segment, getattr(module, "scaling", None))
        return hook

    handles = [m.register_forward_hook(hook_for(i), with_kwargs=True) for i, m in enumerate(modules)]
    try:
        with torch.inference_mode():
            model.model(input_ids=torch.tensor([ids], device=model.device), use_cache=False, logits_to_keep=1)
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(echo), torch.stack(induction)


# --- the compressed cache layer ------------------------------------------------------------------------------------

def fold_heads(keys: torch.Tensor, values: torch.Tensor, count: int, sinks: int, window: int, tail: int = 0
               ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Keep sinks + the last `window` entries before the `tail` newest (which stay), fold the rest into the
    compensation token at index `sinks` (already there when count > 0: its running mean absorbs the new drops).
    keys/values (batch, heads, L, d). Returns new keys, values and the count the token stands for."""
    start = sinks + (1 if count else 0)
    stop = keys.shape[2] - tail - window
    if stop <= start:
        return keys, values, count
    new_count = count + stop - start

    def fold(x: torch.Tensor) -> torch.Tensor:
        total = x[:, :, start - (1 if count else 0):stop].sum(dim=2, keepdim=True, dtype=torch.float32)
        if count:  # the old token already stands for `count` entries, not one
            total.add_(x[:, :, sinks:sinks + 1], alpha=count - 1)
        mean = total.div_(new_count).to(x.dtype)
        return torch.cat([x[:, :, :sinks], mean, x[:, :, stop:]], dim=2)

    return fold(keys), fold(values), new_count


class RazorLayer(DynamicLayer):
    """A cache layer whose KV heads may hold different lengths: before `split`, a plain DynamicLayer; after, the
    retrieval heads in `keys`/`values` (every entry) and the other heads in `ckeys`/`cvalues` (sinks, compensation
    token at index `sinks`, recent entries). Only these four tensors are stored; `update` returns padded copies."""

    is_croppable = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ckeys: torch.Tensor | None = None
        self.cvalues: torch.Tensor | None = None
        self.retrieval: tuple[int, ...] = ()
        self.compressed: tuple[int, ...] = ()
        self.count = 0  # dropped entries the compensation token stands for (0: no token)
        self.sinks = 0

    @property
    def is_split(self) -> bool:
        return self.ckeys is not None

    def split(self, retrieval: tuple[int, ...], sinks: int) -> None:
        """Separate the retrieval heads from the heads to compress (both still whole)."""
        heads = self.keys.shape[1]
        self.retrieval = tuple(retrieval)
        self.compressed = tuple(h for h in range(heads) if h not in self.retrieval)
        self.sinks = sinks
        keep = torch.tensor(self.retrieval, dtype=torch.long, device=self.keys.device)
        comp = torch.tensor(self.compressed, dtype=torch.long, device=self.keys.device)
        self.ckeys, self.cvalues = self.keys.index_select(1, comp), self.values.index_select(1, comp)
        self.keys, self.values = self.keys.index_select(1, keep), self.values.index_select(1, keep)

    def fold(self, window: int, tail: int) -> None:
        self.ckeys, self.cvalues, self.count = fold_heads(self.ckeys, self.cvalues, self.count, self.sinks, window,
                                                          tail)

    def head_lengths(self) -> tuple[int, int]:
        """Entries held by the retrieval heads and by the compressed heads (0 for a group without heads)."""
        full = self.keys.shape[2] if self.retrieval else 0
        return full, self.ckeys.shape[2] if self.compressed else 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_split:
            return super().update(key_states, value_states, *args, **kwargs)
        keep, comp = list(self.retrieval), list(self.compressed)
        self.keys = torch.cat([self.keys, key_states[:, keep]], dim=2)
        self.values = torch.cat([self.values, value_states[:, keep]], dim=2)
        self.ckeys = torch.cat([self.ckeys, key_states[:, comp]], dim=2)
        self.cvalues = torch.cat([self.cvalues, value_states[:, comp]], dim=2)
        return self._padded(self.keys, self.ckeys), self._padded(self.values, self.cvalues)

    def _padded(self, full: torch.Tensor, comp: torch.Tensor) -> torch.Tensor:
        """Transient (batch, heads, max length, d) tensor for the attention call; never stored."""
        full_len, comp_len = self.head_lengths()
        batch, _, _, dim = comp.shape
        dense = comp.new_zeros(batch, len(self.retrieval) + len(self.compressed), max(full_len, comp_len), dim)
        if self.retrieval:
            dense[:, list(self.retrieval), :full_len] = full
        dense[:, list(self.compressed), :comp_len] = comp
        return dense

    def get_seq_length(self) -> int:
        if not self.is_split:
            return super().get_seq_length()
        return max(self.head_lengths())

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def reset(self) -> None:
        super().reset()
        self.ckeys = self.cvalues = None
        self.retrieval, self.compressed, self.count = (), (), 0

    def crop(self, tokens_to_remove: int) -> None:
        if self.is_split:
            raise NotImplementedError("a RazorAttention layer cannot be cropped once compressed")
        super().crop(tokens_to_remove)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        if self.is_split:
            self.ckeys, self.cvalues = self.ckeys[indices], self.cvalues[indices]

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        if self.is_split:
            self.ckeys = self.ckeys.repeat_interleave(repeats, dim=0)
            self.cvalues = self.cvalues.repeat_interleave(repeats, dim=0)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx)


def razor_mask(layer: RazorLayer, q_heads: int, new: int, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive mask (1, q_heads, new, P) for a split layer about to append `new` tokens: each head sees its own
    entries causally, padding is -inf (ragged_mask), and the compensation token of the compressed heads gets
    + log(count)."""
    full_len, comp_len = layer.head_lengths()
    kv_heads = len(layer.retrieval) + len(layer.compressed)
    lengths = [full_len if h in layer.retrieval else comp_len for h in range(kv_heads)]
    mask = ragged_mask(lengths, q_heads, new)
    if layer.count:
        is_comp = torch.zeros(kv_heads, dtype=torch.bool)
        is_comp[list(layer.compressed)] = True
        mask[0, is_comp.repeat_interleave(q_heads // kv_heads), :, layer.sinks] += math.log(layer.count)
    return mask.to(device=device, dtype=dtype)


def window_for(heads: int, retrieval: int, reference: int, kept: int, sinks: int, min_window: int) -> int:
    """Recent window of the compressed heads so that (retrieval * reference + (heads - retrieval) * (sinks + 1 +
    window)) / heads = kept, the compensation token counted; at least `min_window`."""
    if retrieval >= heads:
        return reference
    window = (heads * kept - retrieval * reference) // (heads - retrieval) - sinks - 1
    return max(min_window, window)


class RazorAttention(EvictionMethod):
    name = "razorattention"
    summary = "Retrieval heads (echo/induction probe) keep all; others sinks + window + compensation token (Tang 2024)."
    Params = RazorParams
    uses_queries = False
    # its KV heads hold different lengths once split, and static decode buffers hold one length per layer:
    # it decodes through the model's own forward (`cachebench perf` refuses it in one line)
    fixed_cache_while_decoding = False

    def __init__(self, params: RazorParams) -> None:
        super().__init__(params)
        self.retrieval: dict[int, tuple[int, ...]] | None = None  # retrieval KV heads per layer
        self.scores: tuple[torch.Tensor, torch.Tensor] | None = None  # (echo, induction), (layers, q_heads)
        self._kv_heads = 0

    def attach(self, model: Any) -> None:
        """Score every query head on the probe and fix the retrieval KV heads for the run."""
        p, tok, cfg = self.params, model.tokenizer, model.config
        bos = tok.bos_token_id
        ids = probe_ids(cfg.vocab_size, set(tok.all_special_ids), p.probe_tokens, p.probe_repeats, p.seed, bos)
        self.scores = score_heads(model, ids, 1 if bos is not None else 0, p.probe_tokens)
        self._kv_heads = cfg.num_key_value_heads
        self.retrieval = retrieval_kv_heads(*self.scores, p.echo, p.induction, self._kv_heads)

    def new_cache(self, model: Any) -> DynamicCache:
        if self.retrieval is None:  # a caller that skipped attach (in-process tests)
            self.attach(model)
        cache = DynamicCache(config=model.config)
        cache.layers = [RazorLayer() for _ in cache.layers]
        return cache

    def layer_target(self, call: LayerCall, reference: int) -> int:
        """The compressed heads' recent window for this layer (fixed at its first compression)."""
        p = self.params
        if p.spread == "model":
            heads = self._kv_heads * len(self.retrieval)
            retrieval = sum(len(r) for r in self.retrieval.values())
        else:
            heads, retrieval = self._kv_heads, len(self.retrieval[call.layer_idx])
        return window_for(heads, retrieval, reference, p.kept(reference), p.sinks, p.min_window)

    def before_layer(self, call: LayerCall) -> None:
        layer = call.cache.layers[call.layer_idx]
        if isinstance(layer, RazorLayer) and layer.is_split:
            hidden = call.hidden_states  # float32 keeps log(count) exact; GPU kernels want the query's dtype
            dtype = torch.float32 if hidden.device.type == "cpu" else hidden.dtype
            call.attention_mask = razor_mask(layer, call.module.config.num_attention_heads, hidden.shape[1],
                                             hidden.device, dtype)

    def compress(self, call: LayerCall, end: int, window_inputs: Any) -> None:
        """The schedule's compression step in this method's storage: the compressed heads brought back to sinks +
        compensation token + window, every entry after `end` (the new prompt, query-agnostic) kept whole."""
        layer = call.cache.layers[call.layer_idx]
        self._fold(call, layer, tail=held_length(layer) - end)

    def _fold(self, call: LayerCall, layer: RazorLayer, tail: int) -> None:
        """Bring the compressed heads back to sinks + compensation token + window, the `tail` newest kept whole."""
        retrieval = self.retrieval[call.layer_idx]
        if len(retrieval) >= layer.keys.shape[1] and not layer.is_split:
            return  # every KV head of this layer is a retrieval head
        held = layer.ckeys.shape[2] if layer.is_split else layer.keys.shape[2]
        window = self.target_for(call, held - tail)
        if not layer.is_split:
            if held - tail <= self.params.sinks + window + 1:
                return
            layer.split(retrieval, self.params.sinks)
        layer.fold(window, tail)
        stats = call.state.setdefault("razor", {})
        stats[call.layer_idx] = {"retrieval": len(retrieval), "window": window, "count": layer.count}
