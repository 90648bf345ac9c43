"""Head-adaptive budgets (the schedule's `adapts_head_budgets` piece, Ada-KV's allocation): the pooled selection
against a transcription of the rule, the unpadded per-head storage and its mask against per-head attention computed
by hand, and a score()-only method switched to it on the real embedded model."""

from __future__ import annotations

import math

import pytest
import torch

from cachebench.baselines.kv.snapkv import SnapKV, SnapKVParams
from cachebench.engine.session import KVSession, LayerHooks
from cachebench.kvcompress.evictor import EvictionMethod, layer_targets
from cachebench.kvcompress.ragged import RaggedLayer, head_adaptive_keep, ragged_mask
from cachebench.method import KVMethod


def adakv_transcription(scores: list[list[float]], keep: int, floor: int) -> list[list[int]]:
    """Ada-KV (Feng et al., 2024) with its safeguard: every head first keeps its own `floor` best entries, then
    the rest of the layer's heads x keep go to the best remaining scores of all heads together."""
    chosen = [set(sorted(range(len(row)), key=lambda j: -row[j])[:floor]) for row in scores]
    rest = sorted(((row[j], h, j) for h, row in enumerate(scores) for j in range(len(row)) if j not in chosen[h]),
                  reverse=True)
    for _, h, j in rest[: len(scores) * keep - sum(len(c) for c in chosen)]:
        chosen[h].add(j)
    return [sorted(c) for c in chosen]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("floor", [0, 2, 5])
def test_pooled_selection_matches_the_rule(seed, floor):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.rand(1, 4, 30, generator=gen) ** (torch.arange(1, 5).view(1, 4, 1) * 2.0)  # heads differ
    chosen = head_adaptive_keep(scores, keep=8, floor=floor)
    assert [c[0].tolist() for c in chosen] == adakv_transcription(scores[0].tolist(), 8, floor)
    assert sum(c.shape[-1] for c in chosen) == 4 * 8
    assert min(c.shape[-1] for c in chosen) >= floor
    if floor == 0:
        assert len({c.shape[-1] for c in chosen}) > 1  # the budget really moved between heads


def test_padding_is_never_chosen():
    scores = torch.tensor([[[0.1, 0.2, 0.3, 0.4], [5.0, 6.0, -math.inf, -math.inf]]])
    chosen = head_adaptive_keep(scores, keep=3, floor=0)
    assert [c[0].tolist() for c in chosen] == [[0, 1, 2, 3], [0, 1]]  # all 6 finite entries, never a pad


def test_unpadded_storage_and_mask_give_each_head_its_own_attention():
    torch.manual_seed(0)
    heads, dim, q_heads, new = 3, 8, 6, 4
    layer = RaggedLayer()
    layer.update(torch.randn(1, heads, 20, dim), torch.randn(1, heads, 20, dim))
    layer.split([torch.tensor([[0, 3, 19]]), torch.arange(20).unsqueeze(0), torch.tensor([[5, 6, 7, 8, 19]])])
    assert layer.head_lengths() == [3, 20, 5] and layer.keys is None
    held = [(k.clone(), v.clone()) for k, v in zip(layer.head_keys, layer.head_values, strict=True)]
    new_k, new_v = torch.randn(1, heads, new, dim), torch.randn(1, heads, new, dim)
    lengths = layer.head_lengths()
    keys, values = layer.update(new_k, new_v)
    assert layer.head_lengths() == [7, 24, 9] and keys.shape == (1, heads, 24, dim)
    assert sum(t.numel() for t in layer.head_keys) == (7 + 24 + 9) * dim  # what is stored is only what is kept
    queries = torch.randn(1, q_heads, new, dim)
    group = q_heads // heads
    mask = ragged_mask(lengths, q_heads, new)
    dense = torch.nn.functional.scaled_dot_product_attention(
        queries, keys.repeat_interleave(group, dim=1), values.repeat_interleave(group, dim=1), attn_mask=mask)
    for qh in range(q_heads):
        h = qh // group
        own_k = torch.cat([held[h][0], new_k[:, h]], dim=1)[0]
        own_v = torch.cat([held[h][1], new_v[:, h]], dim=1)[0]
        for i in range(new):
            visible = lengths[h] + i + 1
            weights = torch.softmax(queries[0, qh, i] @ own_k[:visible].T / math.sqrt(dim), dim=-1)
            assert torch.allclose(dense[0, qh, i], weights @ own_v[:visible], atol=1e-5)


class AdaSnapKV(SnapKV):
    """Test-only: SnapKV's score with the base's head-adaptive budgets (Ada-SnapKV in the Ada-KV paper)."""

    name = "test-ada-snapkv"
    adapts_head_budgets = True


def test_the_piece_refuses_what_it_cannot_combine_with():
    with pytest.raises(TypeError, match="head-adaptive"):
        type("Broken", (EvictionMethod,), {"adapts_head_budgets": True, "evicts_while_decoding": True})
    with pytest.raises(TypeError, match="cascade"):
        type("Broken", (EvictionMethod,), {"cascades_budgets": True, "accumulates_attention": True})
    assert AdaSnapKV.fixed_cache_while_decoding is False


def test_a_score_only_method_runs_head_adaptive_on_the_embedded_model(embedded):
    method = AdaSnapKV(SnapKVParams(ratio=0.5, window=16))
    ids = torch.randint(100, 5000, (240,), generator=torch.Generator().manual_seed(0)).tolist()
    hooks = LayerHooks(embedded.model)
    try:
        full = KVSession(embedded, KVMethod(None), hooks)  # the uncompressed cache, for reference
        with torch.inference_mode():
            full.forward(ids[:200], "context")
        session = KVSession(embedded, method, hooks, query_aware=False)
        with torch.inference_mode():
            session.forward(ids[:200], "context")
            targets = layer_targets(session.state)
            moved = 0
            for idx, layer in enumerate(session.cache.layers):
                lengths = layer.head_lengths()
                assert layer.is_split and sum(lengths) == len(lengths) * targets[idx] == len(lengths) * 100
                moved += len(set(lengths)) > 1
                reference = full.cache.layers[idx].keys
                for h, head in enumerate(layer.head_keys):  # every head kept the window, in order, at its end
                    assert torch.equal(head[:, -16:], reference[:, h, -16:])
            assert moved >= 10  # budgets really differ between heads in many layers
            assert method.kv_bytes(session.cache) == sum(
                t.numel() * t.element_size() for layer in session.cache.layers for t in layer.head_keys
                + layer.head_values)
            snap = session.snapshot()
            logits = session.forward(ids[200:220], "query")
            for _ in range(3):
                logits = session.forward([int(logits.argmax())], "decode")
            assert torch.isfinite(logits).all()
            session.restore(snap)  # deep-copied per-head tensors: the same tokens give the same logits
            again = session.forward(ids[200:220], "query")
            for _ in range(3):
                again = session.forward([int(again.argmax())], "decode")
            assert torch.allclose(logits.float(), again.float())
            session.forward(ids[220:230], "query")  # the follow-up: each layer back to heads x target + the prompt
            for idx, layer in enumerate(session.cache.layers):
                assert sum(layer.head_lengths()) == len(layer.head_lengths()) * (targets[idx] + 10)
    finally:
        hooks.remove()


@pytest.mark.parametrize("floor", [0.0, 0.2])
def test_adakv_over_knorm_keeps_what_the_paper_pools_on_the_embedded_model(embedded, floor):
    """`adakv --param scorer=knorm`: each layer's heads keep the entries the Ada-KV transcription picks from the
    full cache's key norms (no queries involved, so the scores are computed here independently of the method)."""
    from cachebench.baselines.kv.adakv import AdaKV, AdaKVParams

    method = AdaKV(AdaKVParams(scorer="knorm", ratio=0.6, floor=floor))
    ids = torch.randint(100, 5000, (150,), generator=torch.Generator().manual_seed(1)).tolist()
    hooks = LayerHooks(embedded.model)
    try:
        with torch.inference_mode():
            full = KVSession(embedded, KVMethod(None), hooks)
            full.forward(ids, "context")
            session = KVSession(embedded, method, hooks, query_aware=False)
            session.forward(ids, "context")
    finally:
        hooks.remove()
    keep = 60  # 150 x (1 - 0.6)
    for idx in (0, 7, 29):
        reference = full.cache.layers[idx].keys[0].float()  # (heads, L, d)
        norms = reference.norm(dim=-1).tolist()
        expected = adakv_transcription([[-n for n in row] for row in norms], keep, round(floor * keep))
        layer = session.cache.layers[idx]
        for h, head in enumerate(layer.head_keys):
            matches = (head[0].float().unsqueeze(1) == reference[h].unsqueeze(0)).all(dim=-1)
            assert torch.equal(matches.sum(dim=1), torch.ones(head.shape[1], dtype=torch.long))
            assert matches.float().argmax(dim=1).tolist() == expected[h], (idx, h)
        assert sum(layer.head_lengths()) == 3 * keep


def test_adakv_refuses_an_unknown_scorer_in_one_line(tmp_path):
    from conftest import assert_usage_error, run_cli

    result = run_cli("eval", "--method", "adakv", "--param", "scorer=h2o", "--task", "multiturn", "--limit", "1",
                     "--out", str(tmp_path))
    assert_usage_error(result, "scorer", tmp_path)
