"""Every registered KV-compression method end to end on the real embedded model: both compression settings,
both SCBench modes, honest kv_bytes, a multi-turn cache brought back to its budget each turn; and every other KV
method that is neither compressing nor reusing (tests/test_kv_reuse.py has those) runs end to end."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import methods_where, run_cli, run_task

from cachebench.engine.session import KVSession, LayerHooks
from cachebench.kvcompress.budget import BudgetParams
from cachebench.kvcompress.evictor import EvictionMethod
from cachebench.models.anatomy import kv_bytes_per_token
from cachebench.models.loading import load_model
from cachebench.registry import build_method

# Every registered method built on EvictionMethod (a new one, a score()-only one included, is tested here without
# being listed), and every KV method that takes a cache budget (ratio or budget) such as TokenSelect, which
# compresses attention per decoding step without evicting; then every other KV method that reuses no stored KV (the
# uncompressed reference, a quantized cache). EpiCache's episode clustering has its own end-to-end tests
# (tests/test_kv_epicache.py), at the context length its episodes need.
OWN_END_TO_END = {"epicache"}
EVICTING = methods_where("kv", lambda cls: issubclass(cls, EvictionMethod))
ALL_COMPRESSING = [name for name in methods_where(
    "kv", lambda cls: issubclass(cls, EvictionMethod) or issubclass(cls.Params, BudgetParams))
                   if name not in OWN_END_TO_END]
OTHER_KV = [name for name in methods_where("kv", lambda cls: not cls.reuses_kv)
            if name not in ALL_COMPRESSING and name not in OWN_END_TO_END]
# RazorAttention keeps retrieval heads whole, so a per-head token budget does not bound its cache
BUDGET_BOUNDED = [name for name in EVICTING if name != "razorattention"]


@pytest.fixture(scope="module")
def full_multi_request(embedded):
    return run_task(embedded, build_method("full", []), mode="multi-request", episodes=1)[1]


def test_list_methods_shows_the_compressing_methods_with_their_parameters():
    result = run_cli("list", "methods")
    assert result.returncode == 0, result.stderr
    for name in ALL_COMPRESSING:
        assert name in result.stdout
    details = "".join(run_cli("list", "methods", name).stdout for name in ("snapkv", "streamingllm", "h2o"))
    for parameter in ("ratio", "budget", "window", "sinks", "recent"):
        assert f"{parameter}:" in details


@pytest.mark.parametrize("name", ALL_COMPRESSING)
@pytest.mark.parametrize("compression", ["query-agnostic", "query-aware"])
def test_method_runs_in_both_settings_and_holds_what_it_claims(embedded, full_multi_request, name, compression):
    method = build_method(name, ["ratio=0.5"])
    _, measures, _ = run_task(embedded, method, mode="multi-request", episodes=1, compression=compression)
    assert all(m.error is None and m.prediction for m in measures)
    for ours, full in zip(measures, full_multi_request, strict=True):
        if name == "tokenselect":  # selects per step, frees nothing
            assert ours.kv_bytes == pytest.approx(full.kv_bytes, rel=0.02)
        elif name == "razorattention":  # retrieval heads keep everything
            assert ours.kv_bytes < 0.8 * full.kv_bytes
        else:  # ratio 0.5: about half of full's cache, plus the uncompressed turn in query-agnostic mode
            assert 0.35 * full.kv_bytes < ours.kv_bytes < 0.65 * full.kv_bytes


@pytest.mark.parametrize("mode", ["multi-request", "multi-turn"])
@pytest.mark.parametrize("name", OTHER_KV)
def test_every_other_kv_method_answers_every_turn_and_reports_its_cache(embedded, name, mode):
    method = build_method(name, [])
    method.attach(embedded)  # as run_eval does once per run
    _, measures, _ = run_task(embedded, method, mode=mode, episodes=1, context_tokens=128, max_new_tokens=4)
    assert len(measures) == 4 and all(m.error is None and m.prediction and m.output_tokens > 0 for m in measures)
    per_token, held = kv_bytes_per_token(embedded.config, embedded.dtype), 0
    for m in measures:  # some bytes, and never more than the uncompressed cache of the same tokens: the context and
        # this request's prompt and reply (multi-turn: every turn's so far)
        held = (held if mode == "multi-turn" else 0) + m.prompt_tokens + m.output_tokens
        assert 0 < m.kv_bytes <= (m.context_tokens + held) * per_token, m.turn


@pytest.mark.parametrize("name", BUDGET_BOUNDED)
def test_multi_turn_cache_is_compressed_again_each_turn(embedded, name):
    budget = 96
    _, measures, _ = run_task(embedded, build_method(name, [f"budget={budget}"]), mode="multi-turn", episodes=1)
    per_token = kv_bytes_per_token(embedded.config, embedded.dtype)
    for m in measures:  # the budget plus this turn's prompt and answer; never the history of earlier turns
        assert m.kv_bytes <= (budget + m.prompt_tokens + m.output_tokens + 1) * per_token, m.turn
    full = run_task(embedded, build_method("full", []), mode="multi-turn", episodes=1)[1]
    assert measures[-1].kv_bytes < 0.5 * full[-1].kv_bytes


def test_rows_record_the_budget_kind_and_the_compression_setting(tmp_path):
    result = run_cli("eval", "--method", "snapkv", "--task", "multiturn", "--limit", "1", "--param", "budget=64",
                     "--compression", "query-aware", "--out", str(tmp_path), "-q")
    assert result.returncode == 0, result.stderr
    import pyarrow.parquet as pq

    table = pq.read_table(result.stdout.strip()).to_pylist()
    assert {row["compression"] for row in table} == {"query-aware"}
    assert json.loads(table[0]["method_params"])["budget"] == 64
    assert json.loads(table[0]["method_params"])["ratio"] is None
    shown = run_cli("show", str(tmp_path))
    assert shown.returncode == 0 and "query-aware" in shown.stdout  # cells are kept apart by setting
    both = run_cli("eval", "--method", "snapkv", "--task", "multiturn", "--param", "budget=64", "--param",
                   "ratio=0.5", "--out", str(tmp_path))
    assert both.returncode == 2 and "ratio or budget, not both" in both.stderr
    assert "Traceback" not in both.stderr


def test_per_layer_budgets_keep_multi_token_prompts_causal():
    """After PyramidKV leaves layers of different lengths, a multi-token prompt must see exactly what the same
    tokens fed one at a time see: the session repairs the mask transformers sized from layer 0."""
    model = load_model("embedded", dtype="float32", device="cpu")
    method = build_method("pyramidkv", ["budget=48", "window=8"])
    hooks = LayerHooks(model.model)
    try:
        context = model.tokenizer("The quick brown fox jumps over the lazy dog. " * 12)["input_ids"]
        prompt = model.tokenizer(" Which animal jumps? The answer is")["input_ids"]
        with torch.inference_mode():
            session = KVSession(model, method, hooks)
            session.forward(context, "context")
            lengths = {layer.keys.shape[-2] for layer in session.cache.layers}
            assert len(lengths) > 5  # pyramid: many different layer lengths
            snap = session.snapshot()
            together = session.forward(prompt, "decode")  # decode phase: nothing is evicted by pyramidkv
            session.restore(snap)
            for token in prompt:
                one_by_one = session.forward([token], "decode")
    finally:
        hooks.remove()
    assert torch.allclose(together, one_by_one, atol=1e-3)
