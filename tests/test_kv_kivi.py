"""KIVI (Liu et al., 2024, arXiv:2402.02750) and transformers' QuantizedCache as the library baseline: the group
minima, scales and packed codes against a transcription of the paper's quantizer written with loops, the round-trip
error bound, the streaming split between quantized and full-precision tokens, the bytes a real cache holds counted
from its tensors, and both methods end to end on the real embedded model."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from conftest import assert_usage_error, run_cli, run_task

from cachebench.baselines.kv.kivi import KIVI, KIVIParams
from cachebench.engine.session import KVSession
from cachebench.kvcompress.quantize import (
    QUANTIZED_PARTS,
    KIVILayer,
    dequantize_keys,
    dequantize_values,
    quantize_keys,
    quantize_values,
    unpack_codes,
)
from cachebench.models.anatomy import kv_bytes_per_token
from cachebench.registry import build_method

SMOL = SimpleNamespace(head_dim=64, hidden_size=576, num_attention_heads=9, num_key_value_heads=3,
                       num_hidden_layers=30)


def random_states(tokens: int, dim: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(1, 2, tokens, dim) with a few outlier channels, as keys have (the reason KIVI quantizes them per channel)."""
    gen = torch.Generator().manual_seed(seed)
    states = torch.randn(1, 2, tokens, dim, generator=gen)
    states[..., :: max(1, dim // 4)] *= 8
    return states.to(dtype)


# --- the quantizer against a transcription of the paper ------------------------------------------------------------

def paper_group(values: list[float], bits: int) -> tuple[float, float, list[int]]:
    """KIVI's asymmetric quantizer of one group: z = min, s = (max − min) / (2^B − 1), q = round((x − z) / s)."""
    low, high = min(values), max(values)
    scale = (high - low) / (2**bits - 1)
    codes = [0 if scale == 0 else min(2**bits - 1, max(0, round((x - low) / scale))) for x in values]
    return low, scale, codes


def paper_pack(codes: list[int], bits: int) -> list[int]:
    """8/B codes per byte, the first code in the lowest bits."""
    per = 8 // bits
    return [sum(codes[i + j] << (bits * j) for j in range(per)) for i in range(0, len(codes), per)]


@pytest.mark.parametrize("bits", [2, 4])
def test_key_groups_are_per_channel_over_tokens_as_the_paper_quantizes(bits):
    keys = random_states(8, 8, seed=bits)
    group = 4
    packed, scale, minimum = quantize_keys(keys, bits, group)
    assert packed.dtype == torch.uint8 and packed.shape == (1, 2, 8, 8 * bits // 8)
    for h in range(2):
        for g in range(8 // group):
            for c in range(8):
                low, s, codes = paper_group([float(keys[0, h, t, c]) for t in range(g * group, (g + 1) * group)],
                                            bits)
                assert float(minimum[0, h, g, c]) == pytest.approx(low, abs=1e-6)
                assert float(scale[0, h, g, c]) == pytest.approx(s, rel=1e-5)
                got = unpack_codes(packed, bits)[0, h, g * group: (g + 1) * group, c].tolist()
                assert got == codes
        for t in range(8):  # the bytes really hold 8/B codes each, packed along the head dimension
            row = [paper_group([float(keys[0, h, u, c]) for u in range(t // group * group, t // group * group + group)],
                               bits)[2][t % group] for c in range(8)]
            assert packed[0, h, t].tolist() == paper_pack(row, bits)


@pytest.mark.parametrize("bits", [2, 4])
def test_value_groups_are_per_token_over_channels_as_the_paper_quantizes(bits):
    values = random_states(5, 16, seed=10 + bits)
    group = 8
    packed, scale, minimum = quantize_values(values, bits, group)
    assert packed.dtype == torch.uint8 and scale.shape == (1, 2, 5, 16 // group)
    for h in range(2):
        for t in range(5):
            row = []
            for g in range(16 // group):
                low, s, codes = paper_group([float(values[0, h, t, c]) for c in range(g * group, (g + 1) * group)],
                                            bits)
                assert float(minimum[0, h, t, g]) == pytest.approx(low, abs=1e-6)
                assert float(scale[0, h, t, g]) == pytest.approx(s, rel=1e-5)
                row += codes
            assert packed[0, h, t].tolist() == paper_pack(row, bits)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_every_element_reads_back_within_half_a_scale(bits, dtype):
    states = random_states(64, 64, seed=bits, dtype=dtype)
    states[0, 1, :32, 5] = 1.5  # a constant group: scale 0, read back exactly
    group = 32
    # float32: only rounding of the arithmetic; bfloat16: the stored minimum and scale and the read-back value are
    # rounded to 8 significant bits
    eps = (1e-6 if dtype == torch.float32 else 2.0**-7) * states.float().abs().amax()
    codes, scale, minimum = quantize_keys(states, bits, group)
    back = dequantize_keys(codes, scale, minimum, bits)
    assert back.dtype == dtype and scale.dtype == dtype and minimum.dtype == dtype
    bound = scale.float().repeat_interleave(group, dim=2) / 2 + eps
    assert ((back.float() - states.float()).abs() <= bound).all()
    assert (back[0, 1, :32, 5] == 1.5).all()
    codes, scale, minimum = quantize_values(states, bits, group)
    back = dequantize_values(codes, scale, minimum, bits)
    bound = scale.float().repeat_interleave(group, dim=3) / 2 + eps
    assert ((back.float() - states.float()).abs() <= bound).all()
    if bits == 2:  # the bound is not vacuous: 2 bits leave errors of a sizeable fraction of a scale
        assert (back.float() - states.float()).abs().amax() > 0.2 * scale.float().amax()


# --- the cache layer: residuals and streaming ----------------------------------------------------------------------

def expected_split(length: int, residual: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """KIVI's split after `length` tokens: quantized (keys, values), full precision (keys, values)."""
    keys_q, values_q = length - length % residual, max(0, length - residual)
    return (keys_q, values_q), (length - keys_q, length - values_q)


def test_prefill_keeps_the_residual_bit_exact_and_attention_sees_the_new_tokens_whole():
    keys, values = random_states(300, 16, seed=1), random_states(300, 16, seed=2)
    layer = KIVILayer(bits=2, group_size=8, residual=32)
    dense_keys, dense_values = layer.update(keys, values)
    assert torch.equal(dense_keys, keys) and torch.equal(dense_values, values)  # the prefill attends in full precision
    assert (layer.quantized_lengths(), layer.residual_lengths()) == expected_split(300, 32)
    assert torch.equal(layer.keys, keys[:, :, 288:]) and torch.equal(layer.values, values[:, :, 268:])
    new_k, new_v = random_states(1, 16, seed=3), random_states(1, 16, seed=4)
    dense_keys, dense_values = layer.update(new_k, new_v)
    old_k, old_v = dequantize_keys(layer.key_codes, layer.key_scale, layer.key_min, 2), dequantize_values(
        layer.value_codes, layer.value_scale, layer.value_min, 2)
    assert torch.equal(dense_keys, torch.cat([old_k, keys[:, :, 288:], new_k], dim=2))
    assert torch.equal(dense_values[:, :, :268], old_v[:, :, :268])
    assert torch.equal(dense_values[:, :, 268:], torch.cat([values[:, :, 268:], new_v], dim=2))
    assert not torch.equal(dense_keys[:, :, :288], keys[:, :, :288])  # the older tokens really are quantized


@pytest.mark.parametrize("chunks", [[1] * 150, [50, 1, 13, 77, 9]])
def test_feeding_tokens_in_pieces_gives_the_prefill_split_and_the_same_codes(chunks):
    total = sum(chunks)
    keys, values = random_states(total, 16, seed=5), random_states(total, 16, seed=6)
    whole = KIVILayer(bits=2, group_size=8, residual=32)
    whole.update(keys, values)
    streamed = KIVILayer(bits=2, group_size=8, residual=32)
    seen = 0
    for size in chunks:
        streamed.update(keys[:, :, seen: seen + size], values[:, :, seen: seen + size])
        seen += size
        assert (streamed.quantized_lengths(), streamed.residual_lengths()) == expected_split(seen, 32), seen
        assert streamed.get_seq_length() == seen
    for name in ("keys", "values", *QUANTIZED_PARTS):
        assert torch.equal(getattr(streamed, name), getattr(whole, name)), name


def test_the_layer_survives_snapshots_and_batch_operations():
    import copy

    layer = KIVILayer(bits=4, group_size=8, residual=16)
    layer.update(random_states(40, 16, seed=7), random_states(40, 16, seed=8))
    snap = copy.deepcopy(layer)
    layer.update(random_states(1, 16, seed=9), random_states(1, 16, seed=10))
    assert snap.get_seq_length() == 40 and layer.get_seq_length() == 41
    assert layer.get_mask_sizes(3) == (44, 0)
    layer.batch_repeat_interleave(2)
    assert all(getattr(layer, name).shape[0] == 2 for name in ("keys", "values", *QUANTIZED_PARTS))
    layer.batch_select_indices(torch.tensor([1]))
    assert layer.key_codes.shape[0] == 1
    with pytest.raises(NotImplementedError):
        layer.crop(-1)
    layer.reset()
    assert layer.get_seq_length() == 0 and layer.key_codes is None


# --- bytes held by a real cache --------------------------------------------------------------------------------------

def prefill(model, method, text: str, decode: int = 3) -> KVSession:
    ids = model.tokenizer(text)["input_ids"]
    session = KVSession(model, method, None)
    with torch.inference_mode():
        session.forward(ids, "context")
        for token in ids[:decode]:
            session.forward([token], "decode")
    return session


def test_kv_bytes_are_the_packed_codes_scales_minima_and_residual_really_held(embedded):
    method = build_method("kivi", [])  # 2 bits, groups of 32, residual 128
    session = prefill(embedded, method, "The quick brown fox jumps over the lazy dog. " * 20)
    length = session.position
    (keys_q, values_q), (keys_r, values_r) = expected_split(length, 128)
    assert keys_q > 0 and values_q > 0 and keys_r > 0
    itemsize = embedded.dtype.itemsize
    heads, dim = embedded.config.num_key_value_heads, 64
    counted = 0
    for layer in session.cache.layers:
        tensors = {name for name, value in vars(layer).items() if isinstance(value, torch.Tensor)}
        assert tensors == {"keys", "values", *QUANTIZED_PARTS}  # nothing else, no full-precision copy
        assert layer.key_codes.dtype == layer.value_codes.dtype == torch.uint8
        assert layer.key_scale.dtype == layer.value_min.dtype == embedded.dtype
        counted += layer.key_codes.numel() + layer.value_codes.numel()
        counted += (layer.key_scale.numel() + layer.key_min.numel() + layer.value_scale.numel()
                    + layer.value_min.numel() + layer.keys.numel() + layer.values.numel()) * itemsize
    assert method.kv_bytes(session.cache) == counted
    per_layer_quantized = heads * (keys_q * dim * 2 // 8 + 2 * (keys_q // 32) * dim * itemsize
                                   + values_q * dim * 2 // 8 + 2 * values_q * (dim // 32) * itemsize)
    per_layer_residual = heads * (keys_r + values_r) * dim * itemsize
    layers = embedded.config.num_hidden_layers
    assert counted == layers * (per_layer_quantized + per_layer_residual)
    full_precision = layers * heads * (keys_q + values_q) * dim * itemsize
    assert layers * per_layer_quantized <= 0.2 * full_precision  # scales and minima included


def test_two_bits_hold_under_a_fifth_of_the_bytes_in_bfloat16_too():
    layer = KIVILayer(bits=2, group_size=32, residual=128)
    layer.update(random_states(512, 64, seed=11, dtype=torch.bfloat16),
                 random_states(512, 64, seed=12, dtype=torch.bfloat16))
    quantized = sum(getattr(layer, name).numel() * getattr(layer, name).element_size() for name in QUANTIZED_PARTS)
    keys_q, values_q = layer.quantized_lengths()
    assert quantized <= 0.2 * 2 * 64 * (keys_q + values_q) * 2  # 2 heads, 64 channels, 2 bytes each
    assert quantized == pytest.approx(0.1875 * 2 * 64 * (keys_q + values_q) * 2)  # 16 code bits + 2x16 per 32


# --- parameters -----------------------------------------------------------------------------------------------------

def test_parameters_are_checked_against_each_other_and_the_model():
    with pytest.raises(ValueError, match="multiple of group_size"):
        KIVI(KIVIParams(group_size=32, residual=40)).check_config(SMOL)
    KIVI(KIVIParams(group_size=16, residual=64)).check_config(SMOL)
    with pytest.raises(ValueError, match="does not divide the head dimension 64"):
        KIVI(KIVIParams(group_size=48, residual=96)).check_config(SMOL)


@pytest.mark.parametrize(("params", "message"), [
    (["group_size=48", "residual=96"], "group_size 48 does not divide the head dimension 64"),
    (["bits=3"], "bits=3: must be one of 2, 4, 8"),
    (["residual=40"], "residual (40) must be a multiple of group_size (32)"),
])
def test_cli_refuses_bad_parameters_in_one_line_before_any_work(tmp_path, params, message):
    args = [arg for p in params for arg in ("--param", p)]
    result = run_cli("eval", "--method", "kivi", "--task", "multiturn", "--limit", "1", *args, "--out", str(tmp_path))
    assert_usage_error(result, message, tmp_path)


# --- end to end on the embedded model --------------------------------------------------------------------------------

CONTEXT = 192


def uncompressed_bytes(model, measure, held: int) -> int:
    """What the full cache holds after a turn: the context and `held` tokens of prompts and replies."""
    return (measure.context_tokens + held) * kv_bytes_per_token(model.config, model.dtype)


def turns_held(measures, mode: str) -> list[int]:
    """Prompt and reply tokens in the cache at each turn's end (multi-turn keeps the earlier turns)."""
    held, out = 0, []
    for m in measures:
        held = (held if mode == "multi-turn" else 0) + m.prompt_tokens + m.output_tokens
        out.append(held)
    return out


@pytest.mark.parametrize("mode", ["multi-request", "multi-turn"])
def test_kivi_four_bits_still_finds_the_passkeys_from_a_fraction_of_the_bytes(embedded, mode):
    # residual 32: most of the context (and so the passkey) is held quantized, not in the full-precision residual
    _, measures, scores = run_task(embedded, build_method("kivi", ["bits=4", "residual=32"]), mode=mode, episodes=1,
                                   context_tokens=CONTEXT, max_new_tokens=16)
    assert all(m.error is None and m.prediction for m in measures)
    # measured on this episode: the full cache finds 4 of 4 passkeys (multi-request) and 3 of 4 (multi-turn); 4 bits
    # find 3 and 3 (and answer the first turn word for word as full does); 2 bits find 1 and 1
    assert sum(scores) >= 3, [m.prediction for m in measures]
    for m, held in zip(measures, turns_held(measures, mode), strict=True):
        assert 0 < m.kv_bytes < 0.35 * uncompressed_bytes(embedded, m, held)


@pytest.mark.parametrize("mode", ["multi-request", "multi-turn"])
def test_quantized_cache_answers_every_turn_below_the_full_bytes(embedded, mode):
    pytest.importorskip("optimum.quanto")
    _, measures, _ = run_task(embedded, build_method("quantized", []), mode=mode, episodes=1, context_tokens=CONTEXT,
                              max_new_tokens=4)
    assert all(m.error is None and m.prediction for m in measures)
    for m, held in zip(measures, turns_held(measures, mode), strict=True):
        assert 0 < m.kv_bytes < 0.5 * uncompressed_bytes(embedded, m, held)


# --- transformers' QuantizedCache ------------------------------------------------------------------------------------

def quanto_bytes(qtensor: torch.Tensor) -> int:
    """A quanto QBits tensor's storage, read from its documented internals: packed codes, scale, shift."""
    codes = qtensor._data._data
    assert codes.dtype == torch.uint8
    return codes.numel() + qtensor._scale.numel() * qtensor._scale.element_size() + \
        qtensor._shift.numel() * qtensor._shift.element_size()


def test_quantized_cache_bytes_are_what_quanto_stores(embedded):
    pytest.importorskip("optimum.quanto")
    method = build_method("quantized", ["nbits=2", "q_group_size=32", "residual_length=8"])
    session = prefill(embedded, method, "Pack my box with five dozen liquor jugs. " * 10, decode=3)
    itemsize, heads, dim = embedded.dtype.itemsize, embedded.config.num_key_value_heads, 64
    held = 0
    for layer in session.cache.layers:
        quantized = quanto_bytes(layer._quantized_keys) + quanto_bytes(layer._quantized_values)
        tokens = layer._quantized_keys.shape[2]  # the first forward quantizes all its tokens
        groups = heads * tokens * dim // 32  # quanto packs 4 groups' 2-bit codes per byte row, the last row padded
        assert quantized == 2 * (math.ceil(groups / 4) * 32 + 2 * groups * itemsize)
        assert layer.keys.shape[2] == 3  # the decoded tokens wait in the residual
        held += quantized + (layer.keys.numel() + layer.values.numel()) * itemsize
    assert method.kv_bytes(session.cache) == held
    per_token = kv_bytes_per_token(embedded.config, embedded.dtype)
    assert held < 0.2 * session.position * per_token


def test_quantized_cache_snapshot_continues_exactly_as_the_original(embedded):
    pytest.importorskip("optimum.quanto")
    method = build_method("quantized", ["residual_length=4"])
    session = prefill(embedded, method, "Sphinx of black quartz, judge my vow. " * 6, decode=0)
    snap = session.snapshot()
    steps = [10, 11, 12, 13, 14, 15]  # past the residual: the cache is quantized again on the way
    with torch.inference_mode():
        first = [session.forward([t], "decode") for t in steps]
        session.restore(snap)
        again = [session.forward([t], "decode") for t in steps]
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)
    kept = snap.cache.layers[0]._key_parts[0]
    assert kept.data_ptr() != session.cache.layers[0]._key_parts[0].data_ptr()


def test_quantized_cache_without_its_backend_is_refused_with_the_install_line(monkeypatch):
    import cachebench.baselines.kv.quantized as quantized

    monkeypatch.setattr(quantized, "backend_available", lambda backend: False)
    with pytest.raises(ValueError, match=r"needs optimum-quanto: pip install 'cachebench\[quant\]'"):
        quantized.QuantizedCacheMethod(quantized.QuantizedParams()).check_config(SMOL)
    with pytest.raises(ValueError, match="q_group_size 48 does not divide"):
        monkeypatch.setattr(quantized, "backend_available", lambda backend: True)
        quantized.QuantizedCacheMethod(quantized.QuantizedParams(q_group_size=48)).check_config(SMOL)

