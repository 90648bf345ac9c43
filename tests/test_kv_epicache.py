"""EpiCache on the real embedded model and the real MiniLM embedder: bounded peak KV during block-wise prefill,
no loss when the budget holds everything, episodes that route questions by topic, and measured layer budgets."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from cachebench.engine.session import KVSession, LayerHooks
from cachebench.kvcompress.episodes import cluster_episodes, segments_of
from cachebench.kvcompress.layer_budget import allocate, key_sensitivity
from cachebench.models.loading import load_model
from cachebench.registry import build_method

COOKING = [
    "Maya: I baked sourdough bread this morning with a new starter.",
    "Tom: Did the crust come out crisp in the oven?",
    "Maya: Yes, I used a cast iron pot and lots of steam.",
    "Tom: My pasta sauce needs more garlic and fresh basil.",
    "Maya: Simmer the tomatoes slowly and add olive oil at the end.",
    "Tom: I will try roasting the peppers before I blend them.",
]
FOOTBALL = [
    "Tom: The match last night went to penalties after extra time.",
    "Maya: Our goalkeeper saved two shots and the striker scored twice.",
    "Tom: The referee gave a red card to their captain in the second half.",
    "Maya: The league table looks tight with three games left this season.",
    "Tom: Our coach changed the formation to four defenders and a deep midfielder.",
    "Maya: The stadium was full and the fans sang until the final whistle.",
]


def conversation(rounds: int) -> str:
    lines = []
    for i in range(rounds):
        block = COOKING if i % 2 == 0 else FOOTBALL
        lines.extend(f"{line} (day {i + 1})" for line in block)
    return "\n".join(lines)


def token_ids(model, text: str) -> list[int]:
    return model.tokenizer(text, add_special_tokens=False)["input_ids"]


def per_layer_token_bytes(model) -> int:
    config = model.config
    return 2 * config.num_key_value_heads * config.head_dim * model.dtype.itemsize


@pytest.fixture(scope="module")
def hooks(embedded):
    installed = LayerHooks(embedded.model)
    yield installed
    installed.remove()


def prefilled(model, method, ids, hooks) -> KVSession:
    session = KVSession(model, method, hooks)
    with torch.inference_mode():
        method.stage(session, ids)
        session.prefill(ids, "context")
    return session


def test_block_wise_prefill_bounds_peak_kv_while_full_grows(embedded, hooks):
    budget, block = 64, 64
    method = build_method("epicache", [f"budget={budget}", f"block={block}", "episodes=2", "patch_tokens=32",
                                       "allocation=uniform"])
    method.attach(embedded)
    full = build_method("full", [])
    layers = embedded.config.num_hidden_layers
    unit = per_layer_token_bytes(embedded)
    peaks, full_peaks = [], []
    for rounds in (6, 18):
        ids = token_ids(embedded, conversation(rounds))
        session = prefilled(embedded, method, ids, hooks)
        peaks.append(session.peak_kv_bytes)
        full_peaks.append(prefilled(embedded, full, ids, None).peak_kv_bytes)
        assert full_peaks[-1] == len(ids) * layers * unit
        # every layer at its budget, one layer at a time holding a block and the patch on top
        assert session.peak_kv_bytes <= (layers * budget + block + 32) * unit
        assert method.kv_bytes(session.cache) == layers * budget * unit  # the routed cache holds the budget
        assert len(session.state["epicache"]["caches"]) == 2 and session.position == len(ids)
    assert full_peaks[1] > 2.5 * full_peaks[0]
    assert peaks[1] <= peaks[0] * 1.01


def test_with_room_for_everything_the_episode_cache_is_the_full_cache(hooks):
    model = load_model("embedded", dtype="float32", device="cpu")
    local_hooks = LayerHooks(model.model)
    try:
        ids = token_ids(model, conversation(4))
        method = build_method("epicache", [f"budget={len(ids)}", "block=48", "episodes=2", "allocation=uniform"])
        method.attach(model)
        ours = prefilled(model, method, ids, local_hooks)
        reference = prefilled(model, build_method("full", []), ids, None)
        question = token_ids(model, "\nWhat did Maya bake?")
        with torch.inference_mode():
            ours_logits = method.prefill(ours, question, "query")
            full_logits = reference.forward(question, "query")
        for mine, theirs in zip(ours.cache.layers, reference.cache.layers, strict=True):
            torch.testing.assert_close(mine.keys, theirs.keys, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ours_logits, full_logits, atol=1e-3, rtol=1e-3)
    finally:
        local_hooks.remove()


def test_episodes_follow_topics_and_questions_route_to_theirs(embedded):
    from cachebench.semantic.embedder import load_embedder

    encoder = load_embedder()
    segments = segments_of(conversation(6), segment_lines=3)
    episodes = cluster_episodes(segments, encoder, episodes=2, medoids=2)
    assert sorted(episodes.sizes) == [6, 6]  # 36 lines, 12 segments, two topics
    cooking = next(i for i, patch in enumerate(episodes.patches) if "bread" in patch or "sauce" in patch)
    assert all(word not in episodes.patches[cooking] for word in ("goalkeeper", "referee", "stadium"))
    ask = encoder.encode(["What kind of bread did Maya bake, and how?", "Who scored in the match on penalties?"])
    assert episodes.route(ask[0]) == cooking
    assert episodes.route(ask[1]) == 1 - cooking


def test_sensitivity_is_measured_per_layer_and_shapes_the_budgets(embedded, hooks):
    method = build_method("epicache", ["ratio=0.75", "block=64", "calibration_tokens=512", "episodes=2"])
    method.attach(embedded)
    ids = token_ids(embedded, conversation(12))
    session = prefilled(embedded, method, ids, hooks)
    sensitivity = method.sensitivity
    assert sensitivity is not None and len(sensitivity) == embedded.config.num_hidden_layers
    assert sensitivity[0] < 1e-3  # layer 0's keys see no attention: eviction cannot move them
    assert max(sensitivity) > 0.01
    targets = session.state["epicache"]["targets"]
    average = round(len(ids) * 0.25)
    assert abs(sum(targets) - average * len(targets)) <= len(targets)
    assert targets[0] == round(0.25 * average)  # the floor
    assert targets[int(np.argmax(sensitivity))] == max(targets)
    per_layer = [layer.keys.shape[-2] for layer in session.cache.layers]
    assert per_layer == targets


def test_allocation_arithmetic():
    assert allocate(100, [0.0, 0.0, 0.0], floor=25, cap=1000) == [100, 100, 100]
    budgets = allocate(100, [0.0, 1.0, 3.0], floor=25, cap=1000)
    assert budgets[0] == 25 and sum(budgets) == 300 and budgets[2] > budgets[1]
    assert allocate(100, [1.0, 1.0], floor=10, cap=60) == [60, 60]
    same = torch.randn(1, 3, 5, 8)
    assert key_sensitivity(same, same) == pytest.approx(0.0, abs=1e-6)
    assert key_sensitivity(same, -same) == pytest.approx(2.0, abs=1e-6)


@pytest.mark.parametrize("mode", ["multi-turn", "multi-request"])
def test_runs_through_the_runner_in_both_modes(embedded, mode):
    from conftest import run_task

    budget = 96
    method = build_method("epicache", [f"budget={budget}", "block=128", "episodes=2", "allocation=uniform"])
    method.attach(embedded)
    _, measures, _ = run_task(embedded, method, task="multiturn.qa", mode=mode, episodes=1, context_tokens=768)
    unit = per_layer_token_bytes(embedded) * embedded.config.num_hidden_layers
    assert all(m.error is None and m.prediction for m in measures)
    carried = 0
    for m in measures:  # the episode's budget, plus what this request (or, multi-turn, the turns so far) added
        added = m.prompt_tokens + m.output_tokens
        carried = carried + added if mode == "multi-turn" else added
        assert m.kv_bytes <= (budget + carried + 1) * unit, m.turn
        assert m.peak_kv_bytes <= (budget + 128) * unit + 256 * per_layer_token_bytes(embedded)
        assert m.peak_kv_bytes < m.context_tokens * unit / 2


def test_cli_runs_epicache_on_longconvqa_and_show_breaks_down_by_type(tmp_path):
    from conftest import AUTO_DTYPE, run_cli

    result = run_cli("eval", "--method", "epicache", "--task", "longconvqa", "--context-tokens", "512", "--limit", "1",
                     "--param", "block=128", "--param", "ratio=0.75", "--out", str(tmp_path), "--quiet")
    assert result.returncode == 0, result.stderr
    (path,) = tmp_path.glob("*.parquet")
    rows = pq.read_table(path).to_pylist()
    assert {r["category"] for r in rows} == {"single-session", "multi-session", "temporal", "knowledge-update",
                                             "abstention"}
    whole_context = rows[0]["context_tokens"] * 30 * 2 * 3 * 64 * AUTO_DTYPE.itemsize  # bytes of the full cache
    assert all(r["error"] is None and r["method"] == "epicache" for r in rows)
    assert all(r["peak_kv_bytes"] < 0.35 * whole_context for r in rows)  # 25% kept + a block and the patch in one layer
    shown = run_cli("show", str(tmp_path))
    assert shown.returncode == 0 and "by category" in shown.stdout and "knowledge-update" in shown.stdout
