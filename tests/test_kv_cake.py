"""CAKE (Qin et al., 2025): the layer preference, the budget slicing, the eviction indicator and the cascade,
checked against straightforward transcriptions of the paper's rules on small random tensors, plus a smoke run on
the embedded model."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from conftest import run_task

from cachebench.baselines.kv.cake import CAKE, CAKEParams, layer_preference
from cachebench.engine.session import LayerCall
from cachebench.kvcompress.evictor import layer_references, layer_targets
from cachebench.kvcompress.layer_budget import allocate_budgets

KV_HEADS, Q_HEADS, DIM, HIDDEN = 2, 6, 8, 16


# ---- independent transcriptions (loops; nothing from the module under test) ----

def window_probs(keys: torch.Tensor, queries: torch.Tensor) -> list[list[list[float]]]:
    """probs[h][i][j]: causal softmax attention of window query i (query head h) onto key j."""
    length, w = keys.shape[2], queries.shape[2]
    group = Q_HEADS // KV_HEADS
    out = []
    for h in range(Q_HEADS):
        rows = []
        for i in range(w):
            visible = length - w + i + 1
            logits = [float(queries[0, h, i].double() @ keys[0, h // group, j].double()) / math.sqrt(DIM)
                      for j in range(visible)]
            top = max(logits)
            exps = [math.exp(x - top) for x in logits]
            rows.append([e / sum(exps) for e in exps] + [0.0] * (length - visible))
        out.append(rows)
    return out


def indicator_keep(keys: torch.Tensor, queries: torch.Tensor, keep: int, gamma: float, kernel: int) -> list[list[int]]:
    """Per KV head: the window plus the top (keep - w) prefix tokens by pooled mean + gamma * var over the window."""
    probs = window_probs(keys, queries)
    length, w = keys.shape[2], queries.shape[2]
    prefix = length - w
    group = Q_HEADS // KV_HEADS
    per_head = []
    for h in range(Q_HEADS):
        raw = []
        for j in range(prefix):
            col = [probs[h][i][j] for i in range(w)]
            mean = sum(col) / w
            var = sum((x - mean) ** 2 for x in col) / (w - 1)
            raw.append(mean + gamma * var)
        half = kernel // 2
        per_head.append([sum(raw[t] for t in range(j - half, j + half + 1) if 0 <= t < prefix) / kernel
                         for j in range(prefix)])
    kept = []
    for g in range(KV_HEADS):
        score = [sum(per_head[h][j] for h in range(g * group, (g + 1) * group)) / group for j in range(prefix)]
        best = sorted(range(prefix), key=lambda j: -score[j])[: keep - w]
        kept.append(sorted(best) + list(range(prefix, length)))
    return kept


def preference(keys: torch.Tensor, queries: torch.Tensor, tau1: float, tau2: float) -> float:
    """P = H^(1/tau1) * V^(1/tau2): entropy and summed per-key variance of the window's attention on the prefix."""
    probs = window_probs(keys, queries)
    w = queries.shape[2]
    prefix = keys.shape[2] - w
    entropy = shift = 0.0
    for h in range(Q_HEADS):
        for j in range(prefix):
            col = [probs[h][i][j] for i in range(w)]
            entropy -= sum(p * math.log(p + 1e-10) for p in col)
            mean = sum(col) / w
            shift += sum((x - mean) ** 2 for x in col) / (w - 1)
    return entropy ** (1 / tau1) * shift ** (1 / tau2)


def slice_budget(prefs: list[float], total: int, caps: list[int]) -> list[int]:
    """B_l = P_l / sum P * total; layers over their cap are fixed at it and the rest re-sliced; largest remainder."""
    fixed: dict[int, int] = {}
    while True:
        rest = [i for i in range(len(prefs)) if i not in fixed]
        money = min(total, sum(caps)) - sum(fixed.values())
        exact = {i: money * prefs[i] / sum(prefs[k] for k in rest) for i in rest}
        over = [i for i in rest if exact[i] >= caps[i]]
        if not over:
            break
        fixed.update({i: caps[i] for i in over})
    budget = {**fixed, **{i: math.floor(exact[i]) for i in rest}}
    short = min(total, sum(caps)) - sum(budget.values())
    for i in sorted(rest, key=lambda i: (budget[i] - exact[i], i))[:short]:
        budget[i] += 1
    return [budget[i] for i in range(len(prefs))]


# ---- tests ----

def test_indicator_selection_matches_transcription():
    torch.manual_seed(1)
    keys = torch.randn(1, KV_HEADS, 40, DIM) * 1.5
    queries = torch.randn(1, Q_HEADS, 8, DIM) * 1.5
    method = CAKE(CAKEParams())
    chosen = method.select(SimpleNamespace(module=SimpleNamespace()), keys, queries, keep=20)
    assert chosen.tolist()[0] == indicator_keep(keys, queries, 20, gamma=200.0, kernel=5)


def test_preference_and_allocation_match_transcription():
    torch.manual_seed(2)
    keys = torch.randn(1, KV_HEADS, 30, DIM)
    queries = torch.randn(1, Q_HEADS, 6, DIM)
    from cachebench.kvcompress.attention import window_attention

    probs = window_attention(queries, keys)[..., :24]
    for tau1, tau2 in ((1.0, 1.0), (1.6, 0.4)):
        assert layer_preference(probs, tau1, tau2) == pytest.approx(preference(keys, queries, tau1, tau2), rel=1e-4)
    prefs = [3.0, 1.0, 0.5, 7.25, 2.0]
    assert allocate_budgets(prefs, 100, [80] * 5) == slice_budget(prefs, 100, [80] * 5)
    assert allocate_budgets(prefs, 100, [40] * 5) == slice_budget(prefs, 100, [40] * 5)  # layer 3 capped
    assert allocate_budgets(prefs, 100, [40] * 5)[3] == 40 and sum(allocate_budgets(prefs, 100, [40] * 5)) == 100
    assert allocate_budgets([1.0, 1.0], 50, [10, 20]) == [10, 20]  # budget above everything held


class FakeAttention(torch.nn.Module):
    def __init__(self, layers: int) -> None:
        super().__init__()
        self.q_proj = torch.nn.Linear(HIDDEN, Q_HEADS * DIM, bias=False)
        self.head_dim = DIM
        self.config = SimpleNamespace(num_hidden_layers=layers)


def feed(method, modules, cache, state, tokens: int, start: int, phase: str, spread: list[float], log=None):
    """One forward over all layers: each appends its keys (values tag the true position), then the hook runs."""
    cos, sin = torch.ones(1, tokens, DIM), torch.zeros(1, tokens, DIM)
    positions = torch.arange(start, start + tokens)
    for idx, module in enumerate(modules):
        layer = cache.layers[idx]
        keys = torch.randn(1, KV_HEADS, tokens, DIM) * spread[idx]
        values = positions.float().view(1, 1, -1, 1).expand(1, KV_HEADS, tokens, DIM).clone()
        layer.keys = keys if layer.keys is None else torch.cat([layer.keys, keys], dim=2)
        layer.values = values if layer.values is None else torch.cat([layer.values, values], dim=2)
        hidden = torch.randn(1, tokens, HIDDEN)
        layer.inputs = (keys, hidden)
        method.on_layer(LayerCall(idx, phase, module, hidden, (cos, sin), positions, cache, state))
        if log is not None:
            log.append(sum(cache.layers[i].keys.shape[2] for i in range(idx + 1)))


def test_cascade_budgets_invariant_and_multi_turn_targets():
    torch.manual_seed(3)
    n_layers, length, window = 5, 64, 8
    method = CAKE(CAKEParams(window=window))
    modules = [FakeAttention(n_layers) for _ in range(n_layers)]
    cache = SimpleNamespace(layers=[SimpleNamespace(keys=None, values=None) for _ in range(n_layers)])
    state: dict = {}
    spread = [0.5, 1.0, 1.5, 2.5, 4.0]  # sharper or flatter attention per layer, so the preferences differ
    held_log: list[int] = []
    with torch.no_grad():
        feed(method, modules, cache, state, length, 0, "context", spread, held_log)

    total = n_layers * method.params.kept(length)
    assert max(held_log) <= total  # the cascade never holds more than the total budget
    targets = [layer_targets(state)[i] for i in range(n_layers)]
    assert sum(targets) == total and len(set(targets)) > 1

    # Independent replay: preferences from each layer's own window, sliced once at the end (the cascade keeps a
    # prefix of each layer's ranking, so it must land on the same tokens), top-k by the indicator plus the window.
    prefs, expected = [], []
    for idx, module in enumerate(modules):
        keys, hidden = cache.layers[idx].inputs
        with torch.no_grad():
            queries = module.q_proj(hidden[:, -window:]).view(1, window, Q_HEADS, DIM).transpose(1, 2)
        prefs.append(preference(keys, queries, 1.0, 1.0))
        expected.append((keys, queries))
    shares = slice_budget(prefs, n_layers * (method.params.kept(length) - window), [length - window] * n_layers)
    for idx, (keys, queries) in enumerate(expected):
        assert targets[idx] == shares[idx] + window
        kept = cache.layers[idx].values[0, :, :, 0].long().sort(dim=-1).values.tolist()
        assert kept == indicator_keep(keys, queries, shares[idx] + window, 200.0, 5)

    # Later turns: a prompt that fits is appended whole; the next one brings each layer back to its own target.
    with torch.no_grad():
        feed(method, modules, cache, state, 5, length, "query", spread)
    assert [cache.layers[i].keys.shape[2] for i in range(n_layers)] == [t + 5 for t in targets]
    before = [cache.layers[i].values[0, 0, -window:, 0].tolist() for i in range(n_layers)]
    with torch.no_grad():
        feed(method, modules, cache, state, 6, length + 5, "query", spread)
    assert [cache.layers[i].keys.shape[2] for i in range(n_layers)] == [t + 6 for t in targets]
    for idx in range(n_layers):  # the scoring window (last tokens before the prompt) and the prompt are kept
        assert cache.layers[idx].values[0, 0, -6 - window:-6, 0].tolist() == before[idx]


@pytest.mark.parametrize("compression", ["query-agnostic", "query-aware"])
def test_embedded_smoke(embedded, compression):
    seen: list[tuple[dict[int, int], dict[int, int]]] = []

    class Probe(CAKE):
        def on_layer(self, call: LayerCall) -> None:
            super().on_layer(call)
            if call.phase != "decode" and call.layer_idx == len(call.cache.layers) - 1:
                seen.append((layer_targets(call.state), layer_references(call.state)))

    _, measures, _ = run_task(embedded, Probe(CAKEParams()), episodes=1, context_tokens=256, compression=compression)
    targets, references = next(t for t in seen if t[0])
    assert len(targets) == 30 and len(set(targets.values())) > 1  # per-layer budgets differ
    assert sum(targets.values()) == 30 * CAKEParams().kept(references[0])
    for m in measures:
        assert "".join(ch for ch in m.prediction if ch.isdigit())  # an answer, with a pass key in it
        full_bytes = 30 * 2 * 3 * 64 * embedded.dtype.itemsize * (m.context_tokens + m.prompt_tokens)
        assert m.kv_bytes < 0.8 * full_bytes
