"""Selection rules of StreamingLLM, SnapKV, PyramidKV, H2O and Knorm against plain transcriptions of their papers,
written here with loops over heads and tokens, on small random tensors with GQA (6 query heads over 2 KV heads)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from cachebench.baselines.kv.h2o import h2o_keep
from cachebench.baselines.kv.knorm import Knorm, KnormParams
from cachebench.baselines.kv.pyramidkv import pyramid_budgets
from cachebench.baselines.kv.snapkv import SnapKV, SnapKVParams
from cachebench.baselines.kv.streamingllm import streaming_keep
from cachebench.kvcompress.attention import accumulated_attention

Q_HEADS, KV_HEADS, DIM = 6, 2, 8


def random_qk(length: int, window: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    keys = torch.randn(1, KV_HEADS, length, DIM, generator=gen)
    queries = torch.randn(1, Q_HEADS, window, DIM, generator=gen) * 2
    return keys, queries


def softmax(values: list[float]) -> list[float]:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    return [e / sum(exps) for e in exps]


def window_probs(keys, queries, kv_head, q_head, i):
    """Attention of window query i (at cache index L - w + i) over the keys it may see."""
    length, w = keys.shape[2], queries.shape[2]
    visible = length - w + i + 1
    logits = [float(queries[0, q_head, i] @ keys[0, kv_head, j]) / math.sqrt(DIM) for j in range(visible)]
    return softmax(logits) + [0.0] * (length - visible)


def snapkv_keep(keys: torch.Tensor, queries: torch.Tensor, keep: int, kernel: int) -> torch.Tensor:
    """SnapKV's selection as the schedule makes it: its score, the window protected, the top kept."""
    return SnapKV(SnapKVParams(kernel=kernel)).select(SimpleNamespace(module=SimpleNamespace()), keys, queries, keep)


def paper_snapkv(keys, queries, keep, kernel):
    """SnapKV (Li et al., 2024), Algorithm 1: sum the window's attention over the prefix, average the query heads
    that share a KV head, pool with a kernel (the sum of the positions inside the sequence over the whole kernel, as
    the authors' code pads with zeros), top-k plus window."""
    length, w = keys.shape[2], queries.shape[2]
    group = Q_HEADS // KV_HEADS
    kept = []
    for h in range(KV_HEADS):
        votes = [0.0] * (length - w)
        for qh in range(h * group, (h + 1) * group):
            for i in range(w):
                probs = window_probs(keys, queries, h, qh, i)
                for j in range(length - w):
                    votes[j] += probs[j] / group
        pooled = []
        for j in range(length - w):
            around = [votes[t] for t in range(j - kernel // 2, j + kernel // 2 + 1) if 0 <= t < length - w]
            pooled.append(sum(around) / kernel)
        best = sorted(range(length - w), key=lambda j: -pooled[j])[: keep - w]
        kept.append(sorted(best) + list(range(length - w, length)))
    return kept


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_snapkv_matches_the_paper(seed):
    keys, queries = random_qk(length=40, window=5, seed=seed)
    ours = snapkv_keep(keys, queries, keep=17, kernel=3)
    assert ours.tolist()[0] == paper_snapkv(keys, queries, keep=17, kernel=3)


def test_snapkv_keeps_only_the_newest_window_entries_when_the_budget_is_smaller():
    keys, queries = random_qk(length=30, window=8, seed=3)
    assert snapkv_keep(keys, queries, keep=5, kernel=3)[0, 0].tolist() == [25, 26, 27, 28, 29]


def test_streamingllm_keeps_sinks_and_the_recent_window():
    expected = [0, 1, 2, 3, *range(100 - 12, 100)]
    assert streaming_keep(100, 16, 4, batch=1, heads=2).tolist() == [[expected, expected]]
    assert streaming_keep(10, 3, 4, batch=1, heads=1).tolist() == [[[0, 1, 2]]]  # sinks capped by the budget


def paper_pyramid(average, window, layers, beta):
    """PyramidKV (Cai et al., 2024) sec. 3: the top layer gets 1/beta of the average, the bottom layer the mirror
    amount, and the layers in between are interpolated arithmetically; the window is kept on top."""
    selected = average - window
    top = selected / beta
    bottom = 2 * selected - top
    return [window + round(bottom - (bottom - top) * layer / (layers - 1)) for layer in range(layers)]


def test_pyramid_budgets_shrink_with_depth_and_keep_the_average():
    budgets = pyramid_budgets(256, 32, 30, 20.0)
    assert budgets == paper_pyramid(256, 32, 30, 20.0)
    assert budgets == sorted(budgets, reverse=True) and budgets[0] > 256 > budgets[-1]
    assert abs(sum(budgets) / 30 - 256) < 1
    assert pyramid_budgets(20, 32, 30, 20.0) == [20] * 30  # the window alone exceeds the budget: uniform


def paper_h2o(keys, queries, keep, recent):
    """H2O (Zhang et al., 2023) Alg. 1: each entry's score is the attention it received from every query (causal),
    summed over the query heads of its KV head; keep the `recent` newest entries and the top scores of the rest."""
    length, n = keys.shape[2], queries.shape[2]
    group = Q_HEADS // KV_HEADS
    kept = []
    for h in range(KV_HEADS):
        score = [0.0] * length
        for qh in range(h * group, (h + 1) * group):
            for i in range(n):
                for j, p in enumerate(window_probs(keys, queries, h, qh, i)):
                    score[j] += p
        older = range(length - recent)
        heavy = sorted(older, key=lambda j: -score[j])[: keep - recent]
        kept.append(sorted(heavy) + list(range(length - recent, length)))
    return kept


@pytest.mark.parametrize("seed", [0, 1])
def test_h2o_matches_the_paper(seed):
    keys, queries = random_qk(length=36, window=36, seed=seed)  # a prefill: every token is a query
    summed = accumulated_attention(queries, keys, max_elements=Q_HEADS * 36 * 5)  # forces several chunks
    scores = summed.reshape(1, KV_HEADS, Q_HEADS // KV_HEADS, -1).sum(dim=2)
    assert h2o_keep(scores, keep=14, recent=6).tolist()[0] == paper_h2o(keys, queries, keep=14, recent=6)


def test_a_ratio_budget_is_truncated_as_the_reference_code_sizes_it():
    from cachebench.kvcompress.budget import BudgetParams

    assert BudgetParams(ratio=0.5).kept(7) == 3  # int(3.5), not round-half-even's 4
    assert BudgetParams(ratio=0.9).kept(100) == 10  # exactly 10, though 100 * (1 - 0.9) is 9.999... in floating point
    assert BudgetParams(ratio=0.75).kept(9) == 2 and BudgetParams(ratio=0.9).kept(5) == 1  # never below one


def test_snapkv_pooling_counts_the_padding_at_the_edges():
    from cachebench.baselines.kv.snapkv import snapkv_scores

    keys, queries = random_qk(length=12, window=2, seed=4)
    pooled = snapkv_scores(keys, queries, kernel=3)
    raw = snapkv_scores(keys, queries, kernel=1)
    assert torch.allclose(pooled[..., 0], (raw[..., 0] + raw[..., 1]) / 3)  # the whole kernel divides, pads are 0
    assert torch.allclose(pooled[..., 5], raw[..., 4:7].sum(-1) / 3)


def paper_knorm(keys, keep):
    """Knorm (Devoto et al., 2024): per KV head, keep the `keep` entries whose keys have the lowest L2 norm."""
    kept = []
    for h in range(keys.shape[1]):
        norms = [math.sqrt(sum(float(x) ** 2 for x in keys[0, h, j])) for j in range(keys.shape[2])]
        kept.append(sorted(sorted(range(len(norms)), key=lambda j: norms[j])[:keep]))
    return kept


@pytest.mark.parametrize("seed", [0, 1])
def test_knorm_keeps_the_lowest_key_norms(seed):
    keys, _ = random_qk(length=40, window=1, seed=seed)
    keys = keys * torch.linspace(0.5, 2.0, 40).view(1, 1, 40, 1)  # norms spread along the sequence, not sorted
    ours = Knorm(KnormParams(budget=13)).select(SimpleNamespace(), keys, None, 13)
    assert ours.tolist()[0] == paper_knorm(keys, 13)
    assert ours[0, 0].tolist() != ours[0, 1].tolist()  # heads choose on their own
