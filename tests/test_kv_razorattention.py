"""RazorAttention (Tang et al., 2024): the echo/induction probe scores and the retrieval-head rule against plain
transcriptions, the per-head keep rule (sinks + recent + compensation mean), attention with the compensation token
against `count` explicit copies, retrieval heads kept whole on the embedded model, kv_bytes, and a quick e2e run."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import run_task
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from cachebench.baselines.kv.razorattention import (
    RazorAttention,
    RazorLayer,
    RazorParams,
    probe_scores,
    razor_mask,
    retrieval_kv_heads,
    window_for,
)
from cachebench.engine.session import KVSession, LayerHooks
from cachebench.kvcompress.evictor import layer_targets

Q_HEADS, KV_HEADS, DIM = 6, 2, 8
GROUPS = Q_HEADS // KV_HEADS


def loop_scores(q: torch.Tensor, k: torch.Tensor, ids: list[int], first_row: int) -> tuple[list[float], list[float]]:
    """The paper's scores written out: for each query in a later repeat, the softmax attention mass on earlier
    occurrences of its own token (echo) and on the tokens that followed them (induction), averaged over queries."""
    echo, induction = [], []
    scale = 1.0 / math.sqrt(q.shape[-1])
    for h in range(q.shape[1]):
        kv = h // GROUPS
        e_sum = i_sum = 0.0
        rows = 0
        for i in range(first_row, len(ids)):
            logits = [float(q[0, h, i] @ k[0, kv, j]) * scale for j in range(i + 1)]
            top = max(logits)
            weights = [math.exp(x - top) for x in logits]
            probs = [w / sum(weights) for w in weights]
            e_sum += sum(probs[j] for j in range(i) if ids[j] == ids[i])
            i_sum += sum(probs[j] for j in range(1, i + 1) if ids[j - 1] == ids[i] and j - 1 < i)
            rows += 1
        echo.append(e_sum / rows)
        induction.append(i_sum / rows)
    return echo, induction


def test_probe_scores_match_a_loop_transcription_and_find_planted_heads():
    torch.manual_seed(0)
    segment, repeats = 5, 3
    ids = [99] + [10, 11, 12, 13, 14] * repeats  # BOS + distinct tokens repeated
    length = len(ids)
    table = torch.linalg.qr(torch.randn(DIM * 4, DIM * 4))[0][:, :DIM] * 3  # near-orthogonal token codes
    code = {t: table[n] for n, t in enumerate(sorted(set(ids)))}
    q = torch.randn(1, Q_HEADS, length, DIM)
    k = torch.randn(1, KV_HEADS, length, DIM)
    for j in range(length):  # KV head 0 keys encode the token, KV head 1 keys the previous token
        k[0, 0, j] = code[ids[j]]
        k[0, 1, j] = code[ids[j - 1]] if j > 0 else torch.zeros(DIM)
    for i in range(length):  # query head 0 looks for its own token (echo), head 4 for keys after it (induction)
        q[0, 0, i] = 8 * code[ids[i]]
        q[0, 4, i] = 8 * code[ids[i]]
    echo, induction = probe_scores(q, k, offset=1, segment=segment)
    want_echo, want_induction = loop_scores(q, k, ids, first_row=1 + segment)
    assert torch.allclose(echo, torch.tensor(want_echo), atol=1e-5)
    assert torch.allclose(induction, torch.tensor(want_induction), atol=1e-5)
    assert int(echo.argmax()) == 0 and echo[0] > 0.4  # the rest of its mass is on itself
    assert int(induction.argmax()) == 4 and induction[4] > 0.7


def test_retrieval_heads_match_a_transcription_of_the_rule():
    torch.manual_seed(1)
    layers = 5
    echo, induction = torch.rand(layers, Q_HEADS), torch.rand(layers, Q_HEADS)
    echo_frac, ind_frac = 0.07, 0.2
    chosen = set()
    for scores, frac in ((echo, echo_frac), (induction, ind_frac)):
        ranked = sorted(((float(scores[lay, h]), lay, h) for lay in range(layers) for h in range(Q_HEADS)),
                        reverse=True)
        chosen |= {(lay, h) for _, lay, h in ranked[: round(frac * layers * Q_HEADS)]}
    want = {lay: [] for lay in range(layers)}
    for lay, h in chosen:  # a KV head is a retrieval head when any of its query heads is one
        if h // GROUPS not in want[lay]:
            want[lay].append(h // GROUPS)
    got = retrieval_kv_heads(echo, induction, echo_frac, ind_frac, KV_HEADS)
    assert got == {lay: tuple(sorted(v)) for lay, v in want.items()}
    assert sum(len(v) for v in got.values()) > 0


def loop_keep(full: torch.Tensor, sinks: int, window: int, tail: int) -> tuple[torch.Tensor, int]:
    """Per head: the first `sinks` entries, then the mean of everything dropped, then the recent `window` and the
    `tail` newest entries; written out over heads and tokens from the uncompressed sequence `full` (heads, L, d)."""
    length = full.shape[1]
    dropped = list(range(sinks, length - tail - window))
    rows = []
    for h in range(full.shape[0]):
        mean = sum(full[h, j] for j in dropped) / len(dropped)
        rows.append(torch.stack([full[h, j] for j in range(sinks)] + [mean]
                                + [full[h, j] for j in range(length - tail - window, length)]))
    return torch.stack(rows), len(dropped)


def test_keep_rule_and_running_compensation_mean_match_a_transcription():
    torch.manual_seed(2)
    sinks, window = 3, 4
    keys = torch.randn(1, KV_HEADS, 30, DIM)
    values = torch.randn(1, KV_HEADS, 30, DIM)
    layer = RazorLayer()
    layer.update(keys[:, :, :20], values[:, :, :20])
    layer.split((), sinks)
    layer.fold(window, tail=0)
    want, count = loop_keep(keys[0, :, :20], sinks, window, 0)
    assert layer.count == count and torch.allclose(layer.ckeys[0], want, atol=1e-6)
    # a later turn of 10 tokens: the last 6 are the new prompt (kept whole), the rest is folded into the running mean
    layer.update(keys[:, :, 20:], values[:, :, 20:])
    layer.fold(window, tail=6)
    want_k, count = loop_keep(keys[0], sinks, window, 6)
    want_v, _ = loop_keep(values[0], sinks, window, 6)
    assert layer.count == count == 30 - 6 - window - sinks
    assert torch.allclose(layer.ckeys[0], want_k, atol=1e-5) and torch.allclose(layer.cvalues[0], want_v, atol=1e-5)


class _Module:
    num_key_value_groups = GROUPS
    is_causal = True


@pytest.mark.parametrize("new", [1, 3])
def test_compensation_token_attention_equals_count_copies_of_the_mean(new):
    torch.manual_seed(3)
    sinks, window, length = 2, 5, 24
    keys, values = torch.randn(1, KV_HEADS, length + new, DIM), torch.randn(1, KV_HEADS, length + new, DIM)
    layer = RazorLayer()
    layer.update(keys[:, :, :length], values[:, :, :length])
    layer.split((1,), sinks)  # KV head 1 is a retrieval head, KV head 0 is compressed
    layer.fold(window, tail=0)
    count, comp_k, comp_v = layer.count, layer.ckeys[0, 0, sinks], layer.cvalues[0, 0, sinks]
    mask = razor_mask(layer, Q_HEADS, new)
    dense_k, dense_v = layer.update(keys[:, :, length:], values[:, :, length:])
    query = torch.randn(1, Q_HEADS, new, DIM)
    out, _ = sdpa_attention_forward(_Module(), query, dense_k, dense_v, mask, scaling=DIM ** -0.5)
    for h in range(Q_HEADS):
        for t in range(new):
            if h // GROUPS == 1:  # retrieval head: plain causal attention over everything
                ks, vs = keys[0, 1, : length + t + 1], values[0, 1, : length + t + 1]
            else:  # sinks, `count` copies of the mean, recent window, new tokens up to t
                recent = range(length - window, length + t + 1)
                ks = torch.stack([keys[0, 0, j] for j in range(sinks)] + [comp_k] * count
                                 + [keys[0, 0, j] for j in recent])
                vs = torch.stack([values[0, 0, j] for j in range(sinks)] + [comp_v] * count
                                 + [values[0, 0, j] for j in recent])
            probs = torch.softmax(ks @ query[0, h, t] * DIM ** -0.5, dim=0)
            assert torch.allclose(out[0, t, h], probs @ vs, atol=1e-5)
    assert dense_k.shape[2] == length + new and not any(v is dense_k for v in vars(layer).values())


def test_window_balances_the_budget_or_falls_to_the_minimum():
    sinks = 4
    for heads, retrieval, reference, kept in ((3, 1, 300, 150), (90, 23, 512, 256), (3, 0, 100, 37)):
        window = window_for(heads, retrieval, reference, kept, sinks, min_window=8)
        average = (retrieval * reference + (heads - retrieval) * (sinks + 1 + window)) / heads
        assert kept - 1 < average <= kept
    assert window_for(3, 2, 300, 150, sinks, min_window=8) == 8  # retrieval heads alone exceed the budget
    assert window_for(3, 3, 300, 150, sinks, min_window=8) == 300  # nothing to compress


@pytest.fixture(scope="module")
def method(embedded):
    meth = RazorAttention(RazorParams(ratio=0.5))
    meth.attach(embedded)
    return meth


def stored_bytes(cache) -> int:
    return sum(t.numel() * t.element_size() for layer in cache.layers
               for t in (layer.keys, layer.values, layer.ckeys, layer.cvalues) if t is not None)


def test_embedded_retrieval_heads_keep_everything_and_compressed_heads_refold(embedded, method):
    kv = embedded.config.num_key_value_heads
    assert 0 < sum(len(v) for v in method.retrieval.values()) < kv * embedded.config.num_hidden_layers
    hooks = LayerHooks(embedded.model)
    try:
        session = KVSession(embedded, method, hooks)
        ids = torch.randint(100, 5000, (200,), generator=torch.Generator().manual_seed(0)).tolist()
        with torch.inference_mode():
            session.forward(ids[:160], "context")
            held = 0
            for idx, layer in enumerate(session.cache.layers):
                retrieval = method.retrieval[idx]
                if len(retrieval) == kv:
                    assert not layer.is_split and layer.keys.shape[2] == 160
                    held += kv * 160
                    continue
                window = layer_targets(session.state)[idx]
                assert layer.retrieval == retrieval and layer.keys.shape[2] == 160
                assert layer.ckeys.shape[2] == method.params.sinks + 1 + window
                assert layer.count == 160 - method.params.sinks - window
                held += len(retrieval) * 160 + len(layer.compressed) * layer.ckeys.shape[2]
            average = held / (kv * len(session.cache.layers))
            assert method.params.kept(160) - 1 < average <= method.params.kept(160)  # model-wide budget met
            assert method.kv_bytes(session.cache) == stored_bytes(session.cache)
            snap = session.snapshot()
            logits = session.forward(ids[160:190], "query")
            for _ in range(3):
                logits = session.forward([int(logits.argmax())], "decode")
            session.restore(snap)  # snapshots deep-copy the split layers; replaying gives the same logits
            again = session.forward(ids[160:190], "query")
            for _ in range(3):
                again = session.forward([int(again.argmax())], "decode")
            assert torch.allclose(logits.float(), again.float())
            before = {i: layer.count for i, layer in enumerate(session.cache.layers)}
            session.forward(ids[190:200], "query")  # the follow-up refolds the 30 + 3 entries beyond the window
            for idx, layer in enumerate(session.cache.layers):
                if layer.is_split:
                    window = layer_targets(session.state)[idx]
                    assert layer.keys.shape[2] == 203 and layer.count == before[idx] + 33
                    assert layer.ckeys.shape[2] == method.params.sinks + 1 + window + 10
            assert method.kv_bytes(session.cache) == stored_bytes(session.cache)
    finally:
        hooks.remove()


@pytest.mark.parametrize("compression", ["query-agnostic", "query-aware"])
def test_e2e_smoke(embedded, method, compression):
    _, measures, scores = run_task(embedded, method, episodes=1, compression=compression, context_tokens=256)
    assert measures and all(m.output_tokens > 0 for m in measures)
    assert all(m.kv_bytes > 0 for m in measures) and len(scores) == len(measures)
    cfg = embedded.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * embedded.dtype.itemsize
    first = measures[0]  # bf16 keys + values of every layer and KV head, were nothing compressed
    assert first.kv_bytes < per_token * (first.context_tokens + first.prompt_tokens + first.output_tokens) * 0.75
