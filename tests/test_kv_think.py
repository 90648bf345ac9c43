"""ThinK (Xu et al., 2024, arXiv:2407.21018): the channel rule against a transcription of the paper's criterion
written with loops (GQA: 6 query heads over 2 KV heads), the pruned storage counted byte by byte, attention through
the dense view against the query restricted to the kept channels, the real embedded model end to end (alone and on
top of SnapKV, both modes, both compression settings), and the CLI refusing what cannot run."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import assert_usage_error, run_cli, run_task

from cachebench.baselines.kv.think import ThinK, ThinKParams
from cachebench.engine.session import KVSession, LayerHooks
from cachebench.kvcompress.channels import ChannelPrunedLayer, channel_scores, channels_kept, keep_channels
from cachebench.method import KVMethod
from cachebench.models.anatomy import head_dim, kv_bytes_per_token, tensor_bytes

Q_HEADS, KV_HEADS, DIM = 6, 2, 8


def random_qk(length: int, window: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    # channels of very different magnitudes, as the paper observes in real key caches
    keys = torch.randn(1, KV_HEADS, length, DIM, generator=gen) * torch.rand(DIM, generator=gen) * 3
    queries = torch.randn(1, Q_HEADS, window, DIM, generator=gen) * torch.rand(DIM, generator=gen) * 3
    return keys, queries


def paper_channels(keys: torch.Tensor, queries: torch.Tensor, ratio: float
                   ) -> tuple[list[list[float]], list[list[int]]]:
    """ThinK's criterion per KV head: channel j scores ||Q[-S_obs:, j] K[:, j]^T||_F, the Frobenius norm of the
    window-query x key outer product of that channel, with the window queries of every query head sharing the KV
    head stacked; the ⌊(1 − λ)·D⌋ best channels are kept."""
    group = Q_HEADS // KV_HEADS
    window, length = queries.shape[2], keys.shape[2]
    scores, kept = [], []
    for h in range(KV_HEADS):
        row = []
        for j in range(DIM):
            total = 0.0
            for qh in range(h * group, (h + 1) * group):
                for t in range(window):
                    for i in range(length):
                        total += (float(queries[0, qh, t, j]) * float(keys[0, h, i, j])) ** 2
            row.append(math.sqrt(total))
        scores.append(row)
        count = math.floor((1 - ratio) * DIM + 1e-9)
        kept.append(sorted(sorted(range(DIM), key=lambda j: -row[j])[:count]))
    return scores, kept


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ratio", [0.4, 0.5, 0.75])
def test_channel_choice_matches_the_paper(seed, ratio):
    keys, queries = random_qk(length=12, window=4, seed=seed)
    scores, kept = paper_channels(keys, queries, ratio)
    assert torch.allclose(channel_scores(queries, keys)[0], torch.tensor(scores), rtol=1e-5)
    chosen = keep_channels(queries, keys, channels_kept(DIM, ratio))
    assert chosen[0].tolist() == kept


def test_channels_kept_is_the_floor_of_what_remains():
    assert [channels_kept(64, r) for r in (0.0, 0.4, 0.5, 0.999)] == [64, 38, 32, 0]
    assert channels_kept(10, 0.9) == 1  # 10·(1 − 0.9) is 0.999… in floating point


def pruned_layer(length: int = 20, prune: int = 14, kept: int = 4, seed: int = 0
                 ) -> tuple[ChannelPrunedLayer, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    keys = torch.randn(1, KV_HEADS, length, DIM, generator=gen)
    values = torch.randn(1, KV_HEADS, length, DIM, generator=gen)
    channels = torch.stack([torch.randperm(DIM, generator=gen)[:kept].sort().values for _ in range(KV_HEADS)])[None]
    layer = ChannelPrunedLayer()
    layer.update(keys, values)
    layer.choose_channels(channels)
    layer.prune(prune)
    return layer, keys, values, channels


def test_the_layer_stores_only_the_kept_channels_and_counts_them():
    layer, keys, _, channels = pruned_layer()
    assert layer.thin_keys.shape == (1, KV_HEADS, 14, 4) and layer.wide_keys.shape == (1, KV_HEADS, 6, DIM)
    for h in range(KV_HEADS):
        assert torch.equal(layer.thin_keys[0, h], keys[0, h, :14][:, channels[0, h]])
    assert torch.equal(layer.wide_keys, keys[:, :, 14:])
    counted = (KV_HEADS * 14 * 4 + KV_HEADS * 6 * DIM + KV_HEADS * 20 * DIM) * 4 + KV_HEADS * 4 * 8
    assert tensor_bytes(layer) == counted  # thin keys, wide keys, values (float32) and int64 indices: nothing else
    assert {name for name, v in vars(layer).items() if isinstance(v, torch.Tensor)} == {
        "thin_keys", "channels", "wide_keys", "values"}
    # the dense view: the kept channels in place, zeros elsewhere for the pruned entries, the rest whole
    dense = layer.keys
    mask = torch.zeros(1, KV_HEADS, 1, DIM, dtype=torch.bool).scatter_(-1, channels.unsqueeze(2), True)
    assert torch.equal(dense[:, :, :14], torch.where(mask, keys[:, :, :14], torch.zeros(())))
    assert torch.equal(dense[:, :, 14:], keys[:, :, 14:])
    assert layer.get_seq_length() == 20


def test_new_entries_stay_whole_until_pruned_and_snapshots_are_independent():
    layer, _, values, channels = pruned_layer()
    snap = copy.deepcopy(layer)
    new_k, new_v = torch.randn(1, KV_HEADS, 3, DIM), torch.randn(1, KV_HEADS, 3, DIM)
    dense, held_values = layer.update(new_k, new_v)
    assert dense.shape == (1, KV_HEADS, 23, DIM) and torch.equal(dense[:, :, 20:], new_k)
    assert torch.equal(held_values, torch.cat([values, new_v], dim=2))
    assert layer.thin_length == 14 and snap.get_seq_length() == 20 and snap.thin_length == 14
    assert torch.equal(snap.keys, pruned_layer()[0].keys)  # the copy did not move with the original
    # the schedule evicts by assigning gathered dense keys: pruning again with the layer's channels loses nothing
    before = layer.keys
    keep = torch.tensor([0, 2, 5, 13, 15, 18, 20, 21, 22])
    layer.keys, layer.values = before[:, :, keep], layer.values[:, :, keep]
    assert layer.thin_length == 0 and layer.get_seq_length() == 9
    layer.prune(4)  # the four entries that were thin before
    assert layer.thin_length == 4 and torch.equal(layer.keys, before[:, :, keep])
    layer.prune(6)  # two entries that were whole lose the pruned channels now
    mask = torch.zeros(1, KV_HEADS, 1, DIM, dtype=torch.bool).scatter_(-1, channels.unsqueeze(2), True)
    assert torch.equal(layer.keys[:, :, 4:6], torch.where(mask, before[:, :, keep[4:6]], torch.zeros(())))


def test_attention_through_the_dense_view_is_the_query_on_the_kept_channels():
    layer, _, _, channels = pruned_layer(length=30, prune=24, kept=3, seed=4)
    new_k, new_v = torch.randn(1, KV_HEADS, 1, DIM), torch.randn(1, KV_HEADS, 1, DIM)
    keys, values = layer.update(new_k, new_v)
    query = torch.randn(1, Q_HEADS, 1, DIM)
    group = Q_HEADS // KV_HEADS
    out = torch.nn.functional.scaled_dot_product_attention(
        query, keys.repeat_interleave(group, dim=1), values.repeat_interleave(group, dim=1))
    for qh in range(Q_HEADS):
        h = qh // group
        q = query[0, qh, 0]
        # the pruned entries meet only the query's kept channels; the others all of them
        logits = torch.cat([layer.thin_keys[0, h] @ q[channels[0, h]], layer.wide_keys[0, h] @ q])
        assert torch.allclose(keys[0, h] @ q, logits, atol=1e-5)
        expected = torch.softmax(logits / math.sqrt(DIM), dim=-1) @ values[0, h]
        assert torch.allclose(out[0, qh, 0], expected, atol=1e-5)


# --- the real embedded model ------------------------------------------------------------------------------------

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
STEPS = 8


@pytest.fixture(scope="module")
def sessions(embedded):
    """Full cache and ThinK alone (ratio=0) at λ = 0, 0.4 and 0.5 on a passkey context: bytes and cache shapes
    after the context, and the top token at each step of full's greedy reply fed to every cache (teacher forcing)."""
    tok = embedded.tokenizer
    context = tok(FILLER * 4 + "The pass key is 73691. Remember it. 73691 is the pass key. " + FILLER * 4)["input_ids"]
    question = tok(" What is the pass key? The pass key is")["input_ids"]
    hooks = LayerHooks(embedded.model)
    runs, forced = {}, None
    try:
        for name, method in (("full", KVMethod(None)), *((lam, ThinK(ThinKParams(ratio=0.0, channel_ratio=lam)))
                                                         for lam in (0.0, 0.4, 0.5))):
            session = KVSession(embedded, method, hooks)
            with torch.inference_mode():
                session.forward(context, "context")
                run = {"bytes": method.kv_bytes(session.cache), "layers": copy.deepcopy(session.cache.layers),
                       "tops": [], "logits": []}
                if name != 0.5:
                    logits = session.forward(question, "query")
                    for step in range(STEPS):
                        run["tops"].append(int(logits.argmax()))
                        run["logits"].append(logits.clone())
                        logits = session.forward([forced[step] if forced else run["tops"][-1]], "decode")
            forced = forced or run["tops"]
            runs[name] = run
    finally:
        hooks.remove()
    return {"context": len(context), **runs}


def test_pruned_bytes_on_the_model_are_what_is_stored(embedded, sessions):
    """ratio=0, λ=0.5: every layer holds the context but its newest `window` entries with half the key channels,
    so those entries cost 0.75 of their uncompressed bytes (keys halved, values whole), plus the int64 indices."""
    config, itemsize = embedded.config, embedded.dtype.itemsize
    layers, heads, dim = config.num_hidden_layers, config.num_key_value_heads, head_dim(config)
    thin = sessions["context"] - 32
    for layer in sessions[0.5]["layers"]:
        assert layer.thin_keys.shape == (1, heads, thin, dim // 2) and layer.wide_keys.shape[2] == 32
        assert layer.values.shape == (1, heads, sessions["context"], dim)
    full = sessions["full"]["bytes"]
    assert full == sessions["context"] * kv_bytes_per_token(config, embedded.dtype)
    uncompressed = layers * thin * 2 * heads * dim * itemsize  # the pruned entries' keys and values, uncompressed
    stored = sessions[0.5]["bytes"] - layers * heads * (dim // 2) * 8  # less the int64 channel indices
    assert stored - (full - uncompressed) == 3 * uncompressed // 4
    kept = channels_kept(dim, 0.4)
    assert sessions[0.4]["bytes"] - layers * heads * kept * 8 == full - layers * thin * heads * (dim - kept) * itemsize


def test_no_channel_pruned_is_the_full_cache_and_lambda_04_keeps_the_passkey(embedded, sessions):
    full = sessions["full"]
    assert len(full["logits"]) == STEPS
    assert all(torch.equal(a, b) for a, b in zip(sessions[0.0]["logits"], full["logits"], strict=True))
    reply = embedded.tokenizer.decode(full["tops"])
    assert "73691" in reply  # the context really holds what the question asks
    ours = sessions[0.4]["tops"]
    assert "73691" in embedded.tokenizer.decode(ours)
    # measured 8 of 8 steps in agreement on this context (λ = 0.5: 6 of 8); the bound leaves room for a 2-step slip
    assert sum(a == b for a, b in zip(ours, full["tops"], strict=True)) >= STEPS - 2


@pytest.mark.parametrize("mode", ["multi-turn", "multi-request"])
@pytest.mark.parametrize("compression", ["query-agnostic", "query-aware"])
@pytest.mark.parametrize("params", [{"evict": "snapkv"}, {"ratio": 0.0}], ids=["on-snapkv", "alone"])
def test_end_to_end_every_turn_answered_within_its_bytes(embedded, mode, compression, params):
    method = ThinK(ThinKParams(**params))
    _, measures, _ = run_task(embedded, method, mode=mode, episodes=1, context_tokens=128, compression=compression,
                              max_new_tokens=4)
    assert len(measures) == 4 and all(m.error is None and m.prediction and m.output_tokens > 0 for m in measures)
    per_token, held = kv_bytes_per_token(embedded.config, embedded.dtype), 0
    for m in measures:  # against the uncompressed cache of the same tokens (multi-turn: every turn's so far)
        held = (held if mode == "multi-turn" else 0) + m.prompt_tokens + m.output_tokens
        uncompressed = (m.context_tokens + held) * per_token
        if "ratio" in params:  # keys of all but the newest entries at 38 of 64 channels: ~0.8 of the cache
            assert 0.75 * uncompressed < m.kv_bytes < 0.95 * uncompressed, m.turn
        else:  # half the tokens, then thinner keys
            assert 0.2 * uncompressed < m.kv_bytes < 0.6 * uncompressed, m.turn


def test_cli_refuses_a_ratio_that_keeps_no_channel_and_an_unknown_eviction(tmp_path):
    for param, message in (("channel_ratio=0.999", "keeps no key channel"), ("evict=h2o", "evict")):
        result = run_cli("eval", "--method", "think", "--task", "multiturn", "--limit", "1", "--param", param,
                         "--out", str(tmp_path))
        assert_usage_error(result, message, tmp_path)
