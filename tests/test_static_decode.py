"""Static-buffer decode (what a CUDA graph replays) against the eager decode, on the real embedded model in fp32:
the same tokens and logits from a full cache and from the caches of every method `cachebench perf` serves (methods
flagged fixed_cache_while_decoding), e.g. those eviction shrank, uniform or per layer."""

from __future__ import annotations

import pytest
import torch
from conftest import declared, methods_where

from cachebench.engine.chat import ChatFormat
from cachebench.engine.session import KVSession, LayerHooks
from cachebench.engine.static_decode import StaticDecoder, bucketed
from cachebench.kvcompress.budget import BudgetParams
from cachebench.models.loading import load_model
from cachebench.registry import build_method

STEPS = 12


@pytest.fixture(scope="module")
def fp32_model():
    return load_model("embedded", dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def hooks(fp32_model):
    installed = LayerHooks(fp32_model.model)
    yield installed
    installed.remove()


def prompt_ids(model) -> tuple[list[int], list[int]]:
    chat = ChatFormat(model.tokenizer)
    story = " ".join(f"On day {d} the baker in Lisbon sold {d * 7} loaves of rye bread." for d in range(1, 40))
    context = model.tokenizer(chat.context(story), add_special_tokens=False)["input_ids"]
    query = model.tokenizer(chat.query("\n\nHow many loaves were sold on day 12?"), add_special_tokens=False)
    return context, query["input_ids"]


# Every method `cachebench perf` serves: its cache is fixed once the prompt is in, and it reuses no stored KV.
PERF_SERVED = methods_where("kv", lambda cls: cls.fixed_cache_while_decoding and not cls.reuses_kv)


@pytest.mark.parametrize("name", PERF_SERVED)
def test_static_decode_matches_eager_decode(fp32_model, hooks, name):
    method = build_method(name, declared(name, {"budget": 120}))
    method.attach(fp32_model)
    context, query = prompt_ids(fp32_model)
    session = KVSession(fp32_model, method, hooks if method.uses_layer_hook else None)
    with torch.inference_mode():
        session.prefill(context, "context")
        first = session.prefill(query, "query").argmax()
        lengths = [layer.keys.shape[-2] for layer in session.cache.layers]
        decoder = StaticDecoder(fp32_model, bucketed(max(lengths) + STEPS, 64))
        decoder.load(session.cache, session.position)
        eager, eager_logits = [int(first)], []
        for _ in range(STEPS):
            logits = session.forward([eager[-1]], "decode")
            eager_logits.append(logits)
            eager.append(int(logits.argmax()))
        static, static_logits = [int(first)], []
        for _ in range(STEPS):
            decoder.token.fill_(static[-1])
            logits = decoder.step()[0]
            static_logits.append(logits)
            static.append(int(logits.argmax()))
    assert static == eager
    for ours, theirs in zip(static_logits, eager_logits, strict=True):
        torch.testing.assert_close(ours, theirs, atol=2e-4, rtol=2e-4)
    if issubclass(method.Params, BudgetParams):  # the buffers follow the evicted cache, not the context
        assert max(lengths) < len(context) and decoder.capacity < len(context)
    if name == "pyramidkv":
        assert len(set(lengths)) > 1  # layers of different lengths decode from one set of buffers
    assert decoder.lengths.tolist() == [n + STEPS for n in lengths]


def test_buckets_and_overflow(fp32_model):
    assert bucketed(1, 256) == 256 and bucketed(256, 256) == 256 and bucketed(257, 256) == 512
    context, _ = prompt_ids(fp32_model)
    session = KVSession(fp32_model, build_method("full", []), None)
    with torch.inference_mode():
        session.prefill(context[:100], "context")
    with pytest.raises(ValueError, match="holds 100 entries"):
        StaticDecoder(fp32_model, 64).load(session.cache, session.position)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU (benchmarks/gpu_decode.py runs this)")
def test_graph_replay_gives_the_eager_tokens():
    from cachebench.engine.static_decode import CapturedStep

    model = load_model("embedded", dtype="bfloat16", device="cuda")
    context, query = prompt_ids(model)
    for name, args in (("full", []), ("snapkv", ["budget=120"])):
        method = build_method(name, args)
        hooks = LayerHooks(model.model) if method.uses_layer_hook else None
        session = KVSession(model, method, hooks)
        with torch.inference_mode():
            session.prefill(context, "context")
            first = session.prefill(query, "query").argmax()
            decoder = StaticDecoder(model, bucketed(max(layer.keys.shape[-2] for layer in session.cache.layers)
                                                    + STEPS, 64))
            decoder.load(session.cache, session.position)
            eager = StaticDecoder(model, decoder.capacity)
            eager.load(session.cache, session.position)
            assert CapturedStep(decoder).generate(first, STEPS) == eager.generate(first, STEPS)
        if hooks is not None:
            hooks.remove()
