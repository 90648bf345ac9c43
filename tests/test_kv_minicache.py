"""MiniCache (Liu et al., 2024, arXiv:2405.14366): the merge against a loop transcription of its formulas, the
restore x̂ = ‖x‖·e with retained entries exact, the bytes really stored (the shared direction once) against the
arithmetic, when the method merges in each compression setting, and the real embedded model end to end."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import assert_usage_error, run_cli, run_task

from cachebench.baselines.kv.minicache import MiniCache, MiniCacheParams, merged_pairs
from cachebench.engine.session import KVSession, LayerHooks
from cachebench.kvcompress.cross_layer import MergedLayer, merge_states, merge_tails, restore_states
from cachebench.method import KVMethod
from cachebench.models.anatomy import cache_bytes, kv_bytes_per_token
from cachebench.registry import build_method

# --- the rule ------------------------------------------------------------------------------------------------------


def transcription(first: torch.Tensor, second: torch.Tensor, t: float, gamma: float
                  ) -> tuple[list[list[list[list[float]]]], set[tuple[int, int, int]]]:
    """MiniCache per token and KV head, in Python floats: x = ‖x‖·(x/‖x‖); the directions merged by SLERP,
    e = sin((1−t)Ω)/sin Ω · x¹/‖x¹‖ + sin(tΩ)/sin Ω · x²/‖x²‖ with Ω = arccos(x¹·x²/(‖x¹‖‖x²‖)); angular distance
    d = Ω/π; per head, token i is retained when d_i > d_max − γ(d_max − d_min), i.e. d_i − d_min > (1 − γ)(d_max −
    d_min). Returns e[b][h][i] and the retained (b, h, i)."""
    batch, heads, length, _ = first.shape
    merged = [[[] for _ in range(heads)] for _ in range(batch)]
    kept = set()
    for b in range(batch):
        for h in range(heads):
            distances = []
            for i in range(length):
                x1, x2 = first[b, h, i].tolist(), second[b, h, i].tolist()
                n1 = math.sqrt(sum(v * v for v in x1))
                n2 = math.sqrt(sum(v * v for v in x2))
                cos = sum(a * c for a, c in zip(x1, x2, strict=True)) / (n1 * n2)
                omega = math.acos(max(-1.0, min(1.0, cos)))
                w1 = math.sin((1 - t) * omega) / math.sin(omega)
                w2 = math.sin(t * omega) / math.sin(omega)
                merged[b][h].append([w1 * a / n1 + w2 * c / n2 for a, c in zip(x1, x2, strict=True)])
                distances.append(omega / math.pi)
            low, high = min(distances), max(distances)
            kept |= {(b, h, i) for i, d in enumerate(distances) if d - low > (1 - gamma) * (high - low)}
    return merged, kept


def correlated(seed: int, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    """Two layers' states that are related (as adjacent layers are) but not equal: a spread of angular distances."""
    gen = torch.Generator().manual_seed(seed)
    first = torch.randn(shape, generator=gen)
    spread = torch.rand(shape[:-1], generator=gen).unsqueeze(-1) * 1.5
    second = 1.3 * first + spread * torch.randn(shape, generator=gen)
    return first.to(dtype), second.to(dtype)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("t", [0.0, 0.6, 1.0])
def test_merge_matches_the_transcription_of_slerp_magnitudes_and_retention(seed, t):
    gamma = 0.3
    first, second = correlated(seed, (2, 3, 14, 8))
    merged = merge_states(first, second, t, gamma)
    expected, kept = transcription(first, second, t, gamma)
    assert torch.allclose(merged.direction, torch.tensor(expected), atol=1e-5)
    assert torch.allclose(merged.first_norms, first.norm(dim=-1)) and torch.allclose(merged.second_norms,
                                                                                     second.norm(dim=-1))
    rows, positions = merged.kept_at.long()
    found = {(int(r) // 3, int(r) % 3, int(p)) for r, p in zip(rows, positions, strict=True)}
    assert found == kept and 0 < len(kept) < first.shape[:3].numel()  # some, not all, are retained
    for layer_states, norms, originals in ((first, merged.first_norms, merged.first_kept),
                                           (second, merged.second_norms, merged.second_kept)):
        restored = restore_states(merged.direction, norms, merged.kept_at, originals)
        for b, h, i in kept:  # retained entries come back bit-exact
            assert torch.equal(restored[b, h, i], layer_states[b, h, i])
        for b in range(2):
            for h in range(3):
                for i in range(14):
                    if (b, h, i) not in kept:  # the others: this layer's magnitude times the shared direction
                        want = torch.tensor(expected[b][h][i]) * layer_states[b, h, i].norm()
                        assert torch.allclose(restored[b, h, i], want, atol=1e-5), (b, h, i)
    if t in (0.0, 1.0):  # SLERP's ends: the lower or the upper layer's own direction, restored exactly
        own = first if t == 0.0 else second
        flat = restore_states(merged.direction, own.norm(dim=-1), merged.kept_at[:, :0], own.new_zeros(0, 8))
        assert torch.allclose(flat, own, atol=1e-5)


def test_gamma_bounds_the_retained_share():
    first, second = correlated(3, (1, 2, 40, 16))
    counts = [merge_states(first, second, 0.6, gamma).kept_at.shape[1] for gamma in (0.0, 0.05, 0.5, 1.0)]
    assert counts[0] == 0 and counts == sorted(counts) and counts[-1] == 2 * 40 - 2  # γ=1: all but each head's min


def test_layers_restore_magnitude_times_the_shared_direction_and_keep_a_tail():
    first_k, second_k = correlated(4, (1, 3, 10, 8), torch.bfloat16)
    first_v, second_v = correlated(5, (1, 3, 10, 8), torch.bfloat16)
    lower, upper = MergedLayer(), MergedLayer()
    lower.update(first_k, first_v)
    upper.update(second_k, second_v)
    keys, values = merge_tails(lower, upper, 10, t=0.6, gamma=0.2)
    assert upper.owner is lower and upper.pair.key_direction.data_ptr() == lower.key_direction.data_ptr()
    assert upper.key_direction is None  # the pair's tensors are held once, by the lower layer
    for layer, originals in ((lower, (first_k, first_v)), (upper, (second_k, second_v))):
        assert layer.tail_length() == 0 and layer.get_seq_length() == 10
        for restored, direction, norms, kept_at, original in zip(
                layer.dense(), (lower.key_direction, lower.value_direction), (layer.key_norms, layer.value_norms),
                (lower.key_kept_at, lower.value_kept_at), originals, strict=True):
            mask = torch.zeros(1, 3, 10, dtype=torch.bool)
            mask.view(3, 10)[kept_at[0].long(), kept_at[1].long()] = True
            assert mask.any() and not mask.all()
            assert torch.equal(restored[mask], original[mask])  # retained: bit-exact
            assert torch.equal(restored[~mask], (norms.unsqueeze(-1) * direction)[~mask])  # x̂ = ‖x‖·e exactly
            assert torch.allclose(norms.float(), original.float().norm(dim=-1), rtol=1e-2)  # the layer's own ‖x‖
    assert torch.equal(lower.key_kept_at, keys.kept_at) and torch.equal(lower.value_kept_at, values.kept_at)
    # new entries append to an unmerged tail, returned after the restored ones; a later merge continues the pair
    new_lower, new_upper = correlated(6, (1, 3, 2, 8), torch.bfloat16)
    lower.update(new_lower, new_lower)
    dense_keys, _ = upper.update(new_upper, new_upper)
    assert dense_keys.shape[2] == 12 and torch.equal(dense_keys[:, :, 10:], new_upper)
    assert torch.equal(upper.keys, new_upper) and upper.get_seq_length() == 12
    merge_tails(lower, upper, 2, t=0.6, gamma=0.2)
    assert upper.merged == lower.merged == 12 and upper.tail_length() == 0
    alone = merge_states(new_lower, new_upper, 0.6, 0.2)
    assert torch.equal(lower.key_direction[:, :, 10:], alone.direction)
    assert torch.equal(lower.key_kept_at[1, -alone.kept_at.shape[1]:], alone.kept_at[1] + 10)


# --- the real embedded model ---------------------------------------------------------------------------------------

CONTEXT = torch.randint(100, 5000, (96,), generator=torch.Generator().manual_seed(7)).tolist()


@pytest.fixture(scope="module")
def prefilled(embedded):
    """The same context prefilled uncompressed and by MiniCache (query-agnostic, default parameters), then three
    tokens decoded by MiniCache (an unmerged tail)."""
    hooks = LayerHooks(embedded.model)
    try:
        with torch.inference_mode():
            full = KVSession(embedded, KVMethod(None), hooks)
            full.forward(CONTEXT, "context")
            method = MiniCache(MiniCacheParams())
            session = KVSession(embedded, method, hooks, query_aware=False)
            session.forward(CONTEXT, "context")
            restored = [layer.dense() for layer in session.cache.layers]
            peak = session.peak_kv_bytes
            for token in (11, 12, 13):
                session.forward([token], "decode")
    finally:
        hooks.remove()
    return full, session, method, restored, peak


def reference_merge(first: torch.Tensor, second: torch.Tensor, t: float, gamma: float
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same formulas in float64 tensor arithmetic: both layers restored, and the retained mask."""
    a, b = first.double(), second.double()
    na, nb = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    omega = torch.arccos(((a / na) * (b / nb)).sum(-1, keepdim=True).clamp(-1, 1))
    e = (torch.sin((1 - t) * omega) * a / na + torch.sin(t * omega) * b / nb) / torch.sin(omega)
    d = omega.squeeze(-1) / math.pi
    high, low = d.amax(-1, keepdim=True), d.amin(-1, keepdim=True)
    return na * e, nb * e, d - low > (1 - gamma) * (high - low)


def test_prefill_merge_on_the_real_model_restores_the_formula_of_the_full_caches(embedded, prefilled):
    full, session, _, restored, _ = prefilled
    pairs = merged_pairs(30, 15)
    assert pairs == [(15, 16), (17, 18), (19, 20), (21, 22), (23, 24), (25, 26), (27, 28)]
    merged_layers = {i for pair in pairs for i in pair}
    for idx in range(30):
        original = full.cache.layers[idx]
        if idx not in merged_layers:  # layers outside the pairs hold exactly the uncompressed cache
            assert session.cache.layers[idx].merged == 0
            assert torch.equal(restored[idx][0], original.keys) and torch.equal(restored[idx][1], original.values)
    for lower, upper in pairs:
        for part in (0, 1):  # keys, values
            first = full.cache.layers[lower].keys if part == 0 else full.cache.layers[lower].values
            second = full.cache.layers[upper].keys if part == 0 else full.cache.layers[upper].values
            want_first, want_second, kept = reference_merge(first, second, 0.6, 0.05)
            assert 0 < int(kept.sum()) < kept.numel() // 4
            tolerance = 2e-2 if first.dtype == torch.bfloat16 else 1e-5  # relative, of the vector's length
            for got, want, original in ((restored[lower][part], want_first, first),
                                        (restored[upper][part], want_second, second)):
                assert torch.equal(got[kept], original[kept])  # retained: the uncompressed entries themselves
                error = (got.double() - want).norm(dim=-1) / original.double().norm(dim=-1)
                assert error[~kept].max() < tolerance, (lower, upper, part, float(error[~kept].max()))


def test_kv_bytes_count_each_stored_tensor_once_and_match_the_arithmetic(embedded, prefilled):
    full, session, method, _, peak = prefilled
    cache, layers = session.cache, session.cache.layers
    pairs = merged_pairs(30, 15)

    def nbytes(tensor):
        return 0 if tensor is None else tensor.numel() * tensor.element_size()

    own = ("keys", "values", "key_norms", "value_norms", "key_kept", "value_kept")
    shared = ("key_direction", "value_direction", "key_kept_at", "value_kept_at")
    distinct = sum(nbytes(getattr(layer, name)) for layer in layers for name in own) + sum(
        nbytes(getattr(layers[lower], name)) for lower, _ in pairs for name in shared)
    assert method.kv_bytes(cache) == distinct == cache_bytes(cache)
    # both layers of a pair read the same direction: counted per layer it would be counted twice
    pair_bytes = sum(nbytes(getattr(layers[lower], name)) for lower, _ in pairs for name in shared)
    naive = sum(nbytes(getattr(layer, name)) for layer in layers for name in own) + 2 * pair_bytes
    assert naive == distinct + pair_bytes and all(layers[upper].owner is layers[lower] for lower, upper in pairs)

    # the arithmetic: h KV heads, d dims, s bytes an element, M merged entries (the context), T tail entries
    h, d, s = 3, 64, layers[0].keys.element_size()
    m, tail = len(CONTEXT), 3
    retained = sum(layers[lower].key_kept_at.shape[1] + layers[lower].value_kept_at.shape[1] for lower, _ in pairs)
    unmerged = 30 - 2 * len(pairs)
    per_pair = (2 * h * m * d * s  # shared directions of keys and values
                + 2 * 2 * h * m * s  # each layer's key and value magnitudes
                + 2 * 2 * h * tail * d * s)  # each layer's unmerged tail
    expected = unmerged * 2 * h * (m + tail) * d * s + len(pairs) * per_pair + retained * (2 * d * s + 2 * 4)
    assert method.kv_bytes(cache) == expected
    uncompressed = 30 * 2 * h * (m + tail) * d * s
    assert cache_bytes(full.cache) == 30 * 2 * h * m * d * s
    # below full by what merging saves: per pair 2·h·M·s·(d − 2) without retention; retention (about γ of the
    # entries) adds its originals back
    predicted = 1 - len(pairs) * 2 * h * m * s * (d - 2) / uncompressed
    ratio = method.kv_bytes(cache) / uncompressed
    assert predicted < ratio < predicted + 0.05 and ratio < 0.85
    assert peak <= cache_bytes(full.cache)  # the context prefill never held more than the uncompressed cache


def test_when_it_merges_in_each_compression_setting(embedded):
    upper_idx = 16  # the first pair's upper layer
    question, follow_up = CONTEXT[:7], CONTEXT[10:15]
    hooks = LayerHooks(embedded.model)
    try:
        with torch.inference_mode():
            agnostic = KVSession(embedded, MiniCache(MiniCacheParams()), hooks, query_aware=False)
            layer = agnostic.cache.layers[upper_idx]
            agnostic.forward(CONTEXT[:40], "context")
            assert (layer.merged, layer.tail_length()) == (40, 0)  # merged as the prefill finishes
            agnostic.forward(question, "query")
            assert (layer.merged, layer.tail_length()) == (40, 7)  # the question is not merged with it
            agnostic.forward([5], "decode")
            agnostic.forward([6], "decode")
            assert (layer.merged, layer.tail_length()) == (40, 9)  # decoding never merges
            agnostic.forward(follow_up, "query")  # the next prompt merges what was held before it
            assert (layer.merged, layer.tail_length()) == (49, 5)
            # the prompt left in the tail is a copy: no view keeps the merged entries' old buffer alive
            assert agnostic.method.kv_bytes(agnostic.cache) == cache_bytes(agnostic.cache)

            aware = KVSession(embedded, MiniCache(MiniCacheParams()), hooks, query_aware=True)
            layer = aware.cache.layers[upper_idx]
            aware.forward(CONTEXT[:40], "context")
            assert (layer.merged, layer.tail_length()) == (0, 40)  # left whole until the question arrives
            assert aware.method.kv_bytes(aware.cache) == cache_bytes(aware.cache) == 40 * kv_bytes_per_token(
                embedded.config, embedded.dtype)
            aware.forward(question, "query")
            assert (layer.merged, layer.tail_length()) == (47, 0)  # context and question merged together
            aware.forward([5], "decode")
            aware.forward(follow_up, "query")
            assert (layer.merged, layer.tail_length()) == (53, 0)
            assert agnostic.state["minicache"][upper_idx]["merged"] == 49
    finally:
        hooks.remove()


def test_a_multi_token_prompt_over_merged_layers_stays_causal(embedded):
    """Merged layers keep most entries outside `keys`: the attention mask must still cover every entry, so a prompt
    fed at once gives what the same tokens fed one at a time give."""
    hooks = LayerHooks(embedded.model)
    prompt = CONTEXT[50:56]
    try:
        with torch.inference_mode():
            session = KVSession(embedded, MiniCache(MiniCacheParams(start_layer=0)), hooks, query_aware=False)
            session.forward(CONTEXT[:48], "context")
            assert all(layer.merged == 48 for layer in session.cache.layers)
            snap = session.snapshot()
            together = session.forward(prompt, "decode")  # decode phase: nothing is merged meanwhile
            session.restore(snap)
            for token in prompt:
                one_by_one = session.forward([token], "decode")
    finally:
        hooks.remove()
    atol = 1e-3 if embedded.dtype == torch.float32 else 0.1
    assert torch.allclose(together.float(), one_by_one.float(), atol=atol)


RUNS: dict[tuple, list] = {}  # end-to-end runs shared by the tests below (each costs seconds on CPU)


def measured(model, name: str, params: tuple[str, ...] = (), mode: str = "multi-turn",
             compression: str = "query-aware") -> list:
    """One episode of multiturn.passkey (128 context tokens, replies of at most 4 tokens), run once per module."""
    key = (name, params, mode, compression)
    if key not in RUNS:
        RUNS[key] = run_task(model, build_method(name, list(params)), mode=mode, episodes=1, context_tokens=128,
                             compression=compression, max_new_tokens=4)[1]
    return RUNS[key]


def agreement(model, ours, reference) -> float:
    """Share of token positions at which two replies agree (over the longer reply)."""
    a = model.tokenizer(ours, add_special_tokens=False)["input_ids"]
    b = model.tokenizer(reference, add_special_tokens=False)["input_ids"]
    return sum(x == y for x, y in zip(a, b, strict=False)) / max(len(a), len(b), 1)


@pytest.mark.parametrize("mode", ["multi-turn", "multi-request"])
@pytest.mark.parametrize("compression", ["query-agnostic", "query-aware"])
def test_every_turn_is_answered_from_a_smaller_cache(embedded, mode, compression):
    measures = measured(embedded, "minicache", (), mode, compression)
    assert len(measures) == 4 and all(m.error is None and m.prediction and m.output_tokens > 0 for m in measures)
    per_token, held = kv_bytes_per_token(embedded.config, embedded.dtype), 0
    for m in measures:  # 7 of 15 layer pairs merged: about 0.77 of the uncompressed cache, plus retention
        held = (held if mode == "multi-turn" else 0) + m.prompt_tokens + m.output_tokens
        most, least = (m.context_tokens + held) * per_token, (m.context_tokens + held - 4) * per_token
        assert 0.74 * least < m.kv_bytes < 0.85 * most, (m.turn, m.kv_bytes / most)


def test_the_full_cache_is_what_merging_nothing_or_retaining_everything_gives(embedded):
    full_multi_turn = measured(embedded, "full")
    last = measured(embedded, "minicache", ("start_layer=29",))  # no layer above the last: nothing is merged
    assert [m.prediction for m in last] == [m.prediction for m in full_multi_turn]
    assert [m.kv_bytes for m in last] == [m.kv_bytes for m in full_multi_turn]
    merged = measured(embedded, "minicache")  # multi-turn, query-aware: the question and later turns merged too
    everything = measured(embedded, "minicache", ("gamma=1",))  # every entry but each head's closest pair retained
    kept = [agreement(embedded, m.prediction, f.prediction) for m, f in zip(everything, full_multi_turn, strict=True)]
    default = [agreement(embedded, m.prediction, f.prediction) for m, f in zip(merged, full_multi_turn, strict=True)]
    # SmolLM2's adjacent layers are far apart (mean angular distance about 0.5): merging them changes the replies,
    # retaining their entries brings full's replies back, at more bytes than full (directions + both originals)
    assert sum(kept) / 4 >= 0.9 > sum(default) / 4
    assert all(e.kv_bytes > f.kv_bytes > m.kv_bytes for e, f, m in zip(everything, full_multi_turn, merged,
                                                                          strict=True))


def test_a_start_layer_beyond_the_model_is_refused_in_one_line(tmp_path):
    result = run_cli("eval", "--method", "minicache", "--task", "multiturn", "--limit", "1", "--param",
                     "start_layer=30", "--out", str(tmp_path))
    assert_usage_error(result, "start_layer=30 is beyond the model", tmp_path)
