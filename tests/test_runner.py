"""The KV runner on the real embedded model: both SCBench modes, golden history, hooks, eviction, determinism."""

from __future__ import annotations

import math

import pytest
from conftest import RecentWindow, WindowParams, run_task

from cachebench.models.anatomy import kv_bytes_per_token
from cachebench.registry import build_method


def test_multi_request_prefills_the_context_once_and_restores_it(embedded):
    counter = RecentWindow(WindowParams(sinks=10**6, window=10**6))  # keeps everything, records every call
    prepared, measures, _ = run_task(embedded, counter, mode="multi-request", episodes=2)
    layers = embedded.config.num_hidden_layers
    context_calls = [c for c in counter.calls if c[1] == "context"]
    assert len(context_calls) == layers * len(prepared)  # one context forward per episode, every layer
    per_token = kv_bytes_per_token(embedded.config, embedded.dtype)
    for episode in prepared:
        rows = [m for m in measures if m.episode_id == episode.episode.episode_id]
        assert len({m.prefill_ms for m in rows}) == 1
        for m in rows:
            assert m.ttft_ms < m.prefill_ms / 3
            # each turn starts from the post-context cache: context + this turn's prompt + fed answer tokens
            fed = m.context_tokens + m.prompt_tokens + max(0, m.output_tokens - 1)
            assert m.kv_bytes in (fed * per_token, (fed + 1) * per_token)
    # every query of a multi-request episode starts at the same true position: right after the context
    query_starts = {c[2] for c in counter.calls if c[1] == "query" and c[0] == 0}
    assert query_starts == {len(p.context_ids) for p in prepared}


def test_multi_turn_carries_the_cache_and_the_model_answers(embedded):
    _, measures, scores = run_task(embedded, build_method("full", []), episodes=2)
    assert all(m.prediction for m in measures)
    per_episode = {}
    for m in measures:
        per_episode.setdefault(m.episode_id, []).append(m)
    for rows in per_episode.values():
        sizes = [m.kv_bytes for m in rows]
        assert sizes == sorted(sizes) and sizes[-1] > sizes[0]  # the conversation grows turn by turn
        assert all(m.prompt_tokens > 5 for m in rows)
    assert sum(scores) / len(scores) >= 0.5


def test_golden_history_appends_reference_answers(embedded):
    prepared, own, _ = run_task(embedded, build_method("full", []), episodes=1)
    _, golden, _ = run_task(embedded, build_method("full", []), episodes=1, golden=True)
    reference_tokens = [
        len(embedded.tokenizer(t.references[0], add_special_tokens=False)["input_ids"])
        for t in prepared[0].episode.turns
    ]
    assert golden[0].prompt_tokens == own[0].prompt_tokens  # nothing to append before the first question
    for turn in range(1, len(golden)):
        # later prompts hold the previous reference answer in place of the model's own reply
        assert golden[turn].prompt_tokens > reference_tokens[turn - 1]
        assert golden[turn].prompt_tokens - reference_tokens[turn - 1] in range(
            own[turn].prompt_tokens - 3, own[turn].prompt_tokens + 1)


def test_hooks_see_every_layer_in_every_phase_with_true_positions(embedded):
    window = RecentWindow(WindowParams(sinks=4, window=24))
    prepared, measures, _ = run_task(embedded, window, episodes=1)
    layers = embedded.config.num_hidden_layers
    phases = {phase for _, phase, _ in window.calls}
    assert phases == {"context", "query", "decode"}
    assert {layer for layer, _, _ in window.calls} == set(range(layers))
    # positions keep counting past the evicted entries: the last decode position exceeds what the cache holds
    last_position = max(pos for _, _, pos in window.calls)
    assert last_position > len(prepared[0].context_ids)
    assert all(m.kv_bytes == 28 * kv_bytes_per_token(embedded.config, embedded.dtype) for m in measures)


def test_a_crippled_cache_scores_lower_on_the_default_task(embedded):
    _, _, full_scores = run_task(embedded, build_method("full", []), episodes=3)
    _, _, crippled = run_task(embedded, RecentWindow(WindowParams(sinks=4, window=24)), episodes=3)
    full_mean, crippled_mean = sum(full_scores) / len(full_scores), sum(crippled) / len(crippled)
    assert full_mean >= 0.6
    assert crippled_mean <= full_mean - 0.3


def test_same_seed_same_predictions(embedded):
    _, first, _ = run_task(embedded, build_method("full", []), episodes=1, seed=7)
    _, second, _ = run_task(embedded, build_method("full", []), episodes=1, seed=7)
    _, other, _ = run_task(embedded, build_method("full", []), episodes=1, seed=8)
    assert [m.prediction for m in first] == [m.prediction for m in second]
    assert [m.prediction for m in first] != [m.prediction for m in other]


def test_decode_time_is_measured_per_token(embedded):
    _, measures, _ = run_task(embedded, build_method("full", []), episodes=1)
    for m in measures:
        assert m.output_tokens >= 1
        assert math.isnan(m.decode_ms_per_token) or 0 < m.decode_ms_per_token < m.ttft_ms * 10
        assert m.peak_mem_bytes >= 0


@pytest.mark.parametrize("mode", ["multi-turn", "multi-request"])
def test_prefix_suffix_and_vt_builders_run_through_the_runner(embedded, mode):
    for task in ("multiturn.vt", "multiturn.kv"):
        _, measures, scores = run_task(embedded, build_method("full", []), task=task, mode=mode, episodes=1,
                                       context_tokens=256)
        assert len(measures) == len(scores) >= 3
        assert all(0.0 <= s <= 1.0 for s in scores)


class FailsOnSecondEpisode(RecentWindow):
    """Test-only: raises inside the model's forward on the second episode's context, like an OOM would."""

    def __init__(self, params: WindowParams) -> None:
        super().__init__(params)
        self.contexts = 0

    def on_layer(self, call) -> None:
        if call.phase == "context" and call.layer_idx == 0:
            self.contexts += 1
        if self.contexts == 2:
            raise RuntimeError("simulated device failure\nsecond line")


def test_a_failing_episode_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    from cachebench import eval_run as evaluate
    from cachebench.results import read_results

    monkeypatch.setattr(evaluate, "build_method", lambda name, params: FailsOnSecondEpisode(WindowParams(10**6, 10**6)))
    outcome = evaluate.run_eval(evaluate.EvalRequest(method="full", task="multiturn.passkey", limit=3, out=tmp_path,
                                                     max_new_tokens=4))
    rows = read_results([outcome.path]).to_pylist()
    assert len(rows) == 12 and outcome.errors == 4
    failed = [r for r in rows if r["error"]]
    assert {r["episode_id"] for r in failed} == {rows[4]["episode_id"]}
    assert all(r["error"] == "RuntimeError: simulated device failure" and r["score"] is None for r in failed)
    assert all(r["score"] is not None for r in rows if not r["error"])
