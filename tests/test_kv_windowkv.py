"""WindowKV (Zuo et al., 2025): the window scoring and selection rule against a plain transcription, the group-wise
budgets, intra-group index sharing on the embedded model, the task-type decision, and a quick end-to-end run."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import run_task

import cachebench.baselines.kv.windowkv as windowkv
from cachebench.baselines.kv.windowkv import WindowKV, WindowKVParams, classify_task, group_budgets, windowkv_keep
from cachebench.engine.session import KVSession, LayerHooks, layer_length
from cachebench.registry import build_method

Q_HEADS, KV_HEADS, DIM = 6, 2, 8


def random_qk(length: int, window: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, KV_HEADS, length, DIM, generator=gen), torch.randn(1, Q_HEADS, window, DIM, generator=gen) * 2


def paper_windowkv(keys, queries, keep, review_window, strategy):
    """Observation-window attention summed over its queries, per query head; review windows cut from the start;
    window score = mean over heads of the mean of all (average) or of the top half (max) of its tokens' scores;
    best windows kept whole, the next best cut to fill the budget; the observation window always kept."""
    length, w = keys.shape[2], queries.shape[2]
    review = length - w
    group = Q_HEADS // KV_HEADS
    votes = [[0.0] * review for _ in range(Q_HEADS)]
    for qh in range(Q_HEADS):
        for i in range(w):
            visible = review + i + 1
            logits = [float(queries[0, qh, i] @ keys[0, qh // group, j]) / math.sqrt(DIM) for j in range(visible)]
            top = max(logits)
            exps = [math.exp(x - top) for x in logits]
            for j in range(review):
                votes[qh][j] += exps[j] / sum(exps)
    windows = [list(range(start, min(start + review_window, review))) for start in range(0, review, review_window)]
    scores = []
    for win in windows:
        per_head = []
        for qh in range(Q_HEADS):
            values = sorted((votes[qh][j] for j in win), reverse=True)
            if strategy == "max":
                values = values[: max(1, review_window // 2)]
            per_head.append(sum(values) / len(values))
        scores.append(sum(per_head) / Q_HEADS)
    kept: list[int] = []
    for k in sorted(range(len(windows)), key=lambda k: (-scores[k], k)):
        kept += windows[k][: keep - w - len(kept)]
    return sorted(kept) + list(range(review, length))


@pytest.mark.parametrize("strategy", ["max", "average"])
@pytest.mark.parametrize(("seed", "length", "window", "keep", "review_window"),
                         [(0, 45, 6, 23, 8), (1, 45, 6, 30, 8), (2, 40, 4, 20, 5), (3, 33, 3, 12, 4)])
def test_window_selection_matches_the_paper(strategy, seed, length, window, keep, review_window):
    keys, queries = random_qk(length, window, seed)
    ours = windowkv_keep(keys, queries, keep, review_window, strategy)
    expected = paper_windowkv(keys, queries, keep, review_window, strategy)
    assert len(expected) == keep
    assert ours.tolist()[0] == [expected] * KV_HEADS  # every KV head keeps the same windows


def test_budget_at_most_the_window_keeps_the_newest_entries():
    keys, queries = random_qk(30, 6, 0)
    assert windowkv_keep(keys, queries, 4).tolist()[0] == [list(range(26, 30))] * KV_HEADS


def test_group_budgets_fall_across_groups_and_keep_the_average():
    budgets = group_budgets(256, 32, 30, 8, 14.0, 512)
    groups = [budgets[g:g + 8] for g in range(0, 30, 8)]
    assert all(len(set(members)) == 1 for members in groups)
    heads = [members[0] for members in groups]
    assert heads == sorted(heads, reverse=True) and heads[0] > heads[-1]
    assert 255 < sum(budgets) / 30 <= 256
    assert group_budgets(256, 32, 30, 8, 0.0, 512) == [256] * 30
    assert max(group_budgets(480, 32, 30, 8, 14.0, 512)) <= 512  # spread limited by the prompt length
    assert 479 < sum(group_budgets(480, 32, 30, 8, 14.0, 512)) / 30 <= 480


def test_task_classification_stands_in_for_the_classifier():
    assert classify_task("Read the book. Question: who is Anna?") == "localization"
    assert classify_task("Summarize the report in a few sentences.") == "aggregation"
    assert classify_task("请总结这本书。") == "aggregation"


class Recording(WindowKV):
    """Records the indices every layer kept, per forward."""

    def __init__(self, params: WindowKVParams) -> None:
        super().__init__(params)
        self.picked: list[dict[int, list]] = []

    def select(self, call, keys, queries, keep):
        chosen = super().select(call, keys, queries, keep)
        if call.layer_idx == 0:
            self.picked.append({})
        self.picked[-1][call.layer_idx] = chosen.tolist()
        return chosen


def _ids(model, text: str) -> list[int]:
    return model.tokenizer.encode(text, add_special_tokens=False)


def test_layers_of_a_group_share_the_first_layers_indices(embedded, monkeypatch):
    computed = []
    original = windowkv.windowkv_keep
    monkeypatch.setattr(windowkv, "windowkv_keep", lambda *a, **k: computed.append(1) or original(*a, **k))
    method = Recording(WindowKVParams(ratio=0.5))
    layers = embedded.config.num_hidden_layers
    groups = math.ceil(layers / 8)
    hooks = LayerHooks(embedded.model)
    try:
        session = KVSession(embedded, method, hooks, query_aware=False)
        story = " ".join(f"Item {i} is stored in box {i * 7 % 13} of room {i % 5}." for i in range(30))
        with torch.inference_mode():
            context = _ids(embedded, story)
            session.prefill(context, "context")
            lengths = [layer_length(session.cache, i) for i in range(layers)]
            logits = session.prefill(_ids(embedded, " Which box holds item 4?"), "query")
            for _ in range(3):
                logits = session.forward([int(logits.argmax())], "decode")
            session.prefill(_ids(embedded, " And item 9?"), "query")  # multi-turn: compressed back to target
    finally:
        hooks.remove()
    assert len(method.picked) == 2 and len(computed) == 2 * groups  # only the first layer of each group computes
    for picked in method.picked:
        for layer in range(layers):
            assert picked[layer] == picked[layer - layer % 8]
    assert lengths == [lengths[layer - layer % 8] for layer in range(layers)]
    assert lengths[0] > lengths[-1]  # the budget falls across groups
    assert session.state["windowkv"]["task"] == "localization" and method.window == 32
    kept = method.picked[0][0][0][0][:-32]  # the context compression, layer 0, batch 0, KV head 0, review part
    review = len(context) - 32
    cut = [w for w in {i // 8 for i in kept} if sum(1 for i in kept if i // 8 == w) < min(8, review - 8 * w)]
    assert len(cut) <= 1  # whole review windows, at most one cut to fill the budget


def test_auto_task_type_reads_the_question_in_the_query_aware_setting(embedded):
    method = WindowKV(WindowKVParams(budget=48))
    hooks = LayerHooks(embedded.model)
    try:
        for question, task in ((" Summarize the notes.", "aggregation"), (" What is in box 3?", "localization")):
            session = KVSession(embedded, method, hooks, query_aware=True)
            with torch.inference_mode():
                session.prefill(_ids(embedded, "Notes: box 3 holds a red key. " * 12), "context")
                session.prefill(_ids(embedded, question), "query")
            assert session.state["windowkv"]["task"] == task
            assert method.window == (16 if task == "aggregation" else 32)
            last = embedded.config.num_hidden_layers - 1
            assert layer_length(session.cache, 0) > layer_length(session.cache, last) >= 1
    finally:
        hooks.remove()


@pytest.mark.parametrize("compression", ["query-agnostic", "query-aware"])
def test_end_to_end_smoke(embedded, compression):
    _, measures, _ = run_task(embedded, build_method("windowkv", ["ratio=0.5"]), episodes=1, context_tokens=256,
                             compression=compression)
    assert measures and all(m.error is None and m.prediction for m in measures)
