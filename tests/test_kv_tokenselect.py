"""TokenSelect: the per-head soft vote against a plain transcription, the gathered attention against masked full
attention, the Selection Cache, and a quick end-to-end run that keeps the whole cache."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import torch
from conftest import run_task
from transformers.cache_utils import DynamicLayer

from cachebench.baselines.kv.tokenselect import (
    SelectiveLayer,
    TokenSelect,
    TokenSelectParams,
    attended_indices,
    step_plan,
    vote_top_k,
)
from cachebench.engine.session import KVSession, LayerCall, LayerHooks
from cachebench.models.anatomy import kv_bytes_per_token, tensor_bytes


def transcribed_selection(queries, past_keys, budget, initial, local):
    """The paper's rule written out: each query head scores every candidate by q . k with its own KV head, the
    scores are softmax-normalised per head, summed over heads, and the top-k candidates are attended together
    with the first `initial` and the last `local` entries (the current token, not among past_keys, is one of them)."""
    q_heads, kv_heads = queries.shape[1], past_keys.shape[1]
    past = past_keys.shape[2]
    total = past + 1
    n_init = min(initial, budget - 1)
    n_local = min(local, budget - n_init)
    top_k = budget - n_init - n_local
    candidates = list(range(n_init, past - (n_local - 1)))
    votes = {j: 0.0 for j in candidates}
    for h in range(q_heads):
        kv = h // (q_heads // kv_heads)
        logits = {j: sum(float(queries[0, h, 0, d]) * float(past_keys[0, kv, j, d])
                         for d in range(queries.shape[-1])) for j in candidates}
        top = max(logits.values())
        norm = sum(math.exp(v - top) for v in logits.values())
        for j in candidates:
            votes[j] += math.exp(logits[j] - top) / norm
    chosen = sorted(candidates, key=lambda j: votes[j], reverse=True)[:top_k]
    assert total > budget
    return sorted(list(range(n_init)) + chosen + list(range(past - (n_local - 1), past)))


def test_soft_vote_selection_matches_transcription():
    generator = torch.Generator().manual_seed(3)
    for past, budget, initial, local in [(40, 16, 3, 5), (57, 30, 4, 1), (25, 9, 0, 4)]:
        queries = torch.randn(1, 6, 1, 8, generator=generator)
        keys = torch.randn(1, 2, past, 8, generator=generator)
        n_init, top_k, n_local = step_plan(past + 1, budget, initial, local)
        top = vote_top_k(queries, keys, n_init, top_k, n_local)
        got = attended_indices(top, past, n_init, n_local)[0].tolist()
        assert got == transcribed_selection(queries, keys, budget, initial, local)
        assert len(got) + 1 == budget  # the current token completes the budget


def test_selective_layer_returns_the_gathered_entries_and_keeps_everything():
    keys, values = torch.randn(1, 3, 10, 4), torch.randn(1, 3, 10, 4)
    new_k, new_v = torch.randn(1, 3, 1, 4), torch.randn(1, 3, 1, 4)
    layer, plain = SelectiveLayer(), DynamicLayer()
    for target in (layer, plain):
        target.update(keys, values)
    layer.pending = torch.tensor([[0, 4, 7]])
    got_k, got_v = layer.update(new_k, new_v)
    plain.update(new_k, new_v)
    assert torch.equal(got_k, torch.cat([keys[:, :, [0, 4, 7]], new_k], dim=2))
    assert torch.equal(got_v, torch.cat([values[:, :, [0, 4, 7]], new_v], dim=2))
    assert layer.pending is None and layer.keys.shape[2] == 11
    assert tensor_bytes(layer) == tensor_bytes(plain)  # the full cache is still held: no bytes freed


class Recording(TokenSelect):
    """Records each layer's attended past indices of the last decode step."""

    def __init__(self, params):
        super().__init__(params)
        self.attended = {}

    def before_layer(self, call):
        super().before_layer(call)
        pending = getattr(call.cache.layers[call.layer_idx], "pending", None)
        if pending is not None:
            self.attended[call.layer_idx] = pending.clone()


def test_gathered_attention_equals_masked_full_attention(embedded):
    method = Recording(TokenSelectParams(budget=32, initial=4, local=8))
    ids = embedded.tokenizer("The old lighthouse keeper wrote the passcode 4417 in his log before the storm. " * 6,
                             add_special_tokens=False)["input_ids"]
    attn = embedded.model.model.layers[7].self_attn
    seen = {}
    handle = attn.register_forward_hook(
        lambda module, args, kwargs, out: seen.update(out=out[0], kwargs=kwargs), with_kwargs=True)
    hooks = LayerHooks(embedded.model)
    try:
        session = KVSession(embedded, method, hooks)
        with torch.inference_mode():
            logits = session.forward(ids, "context")
            before = copy.deepcopy(session.cache)
            session.forward([int(logits.argmax())], "decode")
            past = before.layers[7].keys.shape[2]
            chosen = method.attended[7][0]
            assert len(chosen) == 31 and past > 31
            visible = torch.zeros(1, 1, 1, past + 1, dtype=torch.bool)
            visible[..., chosen] = True
            visible[..., past] = True
            kw, gathered = seen["kwargs"], seen["out"]
            masked, _ = attn(hidden_states=kw["hidden_states"], position_embeddings=kw["position_embeddings"],
                             attention_mask=visible, cache=copy.deepcopy(before))
            full, _ = attn(hidden_states=kw["hidden_states"], position_embeddings=kw["position_embeddings"],
                           attention_mask=None, cache=copy.deepcopy(before))
    finally:
        hooks.remove()
        handle.remove()
    gathered, masked, full = gathered.float(), masked.float(), full.float()
    assert torch.allclose(gathered, masked, atol=2e-2, rtol=2e-2)
    assert (gathered - full).abs().max() > 5 * (gathered - masked).abs().max()  # the selection mattered
    assert session.cache.layers[7].keys.shape[2] == past + 1  # the step's entry was appended to the full cache


def _decode_call(embedded, layer, hidden, state, phase="decode"):
    head_dim = embedded.config.head_dim
    cos, sin = torch.ones(1, 1, head_dim, dtype=hidden.dtype), torch.zeros(1, 1, head_dim, dtype=hidden.dtype)
    return LayerCall(layer_idx=0, phase=phase, module=embedded.model.model.layers[0].self_attn,
                     hidden_states=hidden, position_embeddings=(cos, sin), positions=torch.tensor([0]),
                     cache=SimpleNamespace(layers=[layer]), state=state, attention_mask=None)


def test_selection_cache_reuses_only_for_similar_queries(embedded):
    generator = torch.Generator().manual_seed(0)
    dtype, hidden_size = embedded.dtype, embedded.config.hidden_size
    method = TokenSelect(TokenSelectParams(budget=40, initial=4, local=8, similarity=0.9))
    layer = SelectiveLayer()
    kv_heads, head_dim = embedded.config.num_key_value_heads, embedded.config.head_dim
    layer.update(torch.randn(1, kv_heads, 200, head_dim, generator=generator).to(dtype),
                 torch.randn(1, kv_heads, 200, head_dim, generator=generator).to(dtype))
    state = {}

    def step(hidden, phase="decode"):
        method.before_layer(_decode_call(embedded, layer, hidden, state, phase))
        chosen = layer.pending
        layer.update(*(torch.randn(1, kv_heads, hidden.shape[1], head_dim, generator=generator).to(dtype)
                       for _ in range(2)))
        return chosen

    first = torch.randn(1, 1, hidden_size, generator=generator).to(dtype)
    a = step(first)
    assert method.reused_selections == 0 and method.selection_steps == 1
    b = step(first + 0.01 * torch.randn(1, 1, hidden_size, generator=generator).to(dtype))
    assert method.reused_selections == 1
    assert torch.equal(a[0, 4:-7], b[0, 4:-7])  # the voted tokens are reused; the local window moves on
    step(torch.randn(1, 1, hidden_size, generator=generator).to(dtype))
    assert method.reused_selections == 1 and method.selection_steps == 3
    step(torch.randn(1, 3, hidden_size, generator=generator).to(dtype), phase="query")  # a new prompt: full attention
    assert 0 not in state["tokenselect"]
    step(first)  # selects afresh after the prompt, though this query matches an earlier one
    assert method.reused_selections == 1 and method.selection_steps == 4
    assert method.selection_ms_total > 0


def test_end_to_end_keeps_the_full_cache(embedded):
    per_token = kv_bytes_per_token(embedded.config, embedded.dtype)
    for compression in ("query-agnostic", "query-aware"):
        method = TokenSelect(TokenSelectParams())
        _, measures, _ = run_task(embedded, method, mode="multi-request", episodes=1, compression=compression)
        assert all(m.prediction for m in measures)
        assert method.selection_steps > 0 and method.reused_selections > 0
        for m in measures:
            fed = m.context_tokens + m.prompt_tokens + max(0, m.output_tokens - 1)
            assert m.kv_bytes in (fed * per_token, (fed + 1) * per_token)
