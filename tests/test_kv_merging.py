"""KVMerger and Chelsea, the two methods that merge cache entries along the sequence: their rules against plain
transcriptions written here with loops (sets, pivots and Gaussian weights; alternating partition, matching and
centroids), their compression step on a layer (exact sizes, convex merges, untouched entries bit-exact), the
proportional-attention mask against duplicated entries, and both methods end to end on the real embedded model."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from conftest import assert_usage_error, run_cli, run_task
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from cachebench.baselines.kv.chelsea import Chelsea, ChelseaParams, chelsea_plan
from cachebench.baselines.kv.kvmerger import KVMerger, KVMergerParams, kvmerger_plan
from cachebench.engine.session import KVSession, LayerCall, LayerHooks
from cachebench.kvcompress.merge import SizedLayer, size_bias_mask
from cachebench.kvcompress.queries import WindowInputs
from cachebench.method import KVMethod
from cachebench.models.anatomy import kv_bytes_per_token, tensor_bytes
from cachebench.models.loaded import LoadedModel
from cachebench.registry import build_method

Q_HEADS, KV_HEADS, DIM, HIDDEN = 6, 2, 8, 16


# --- transcriptions ----------------------------------------------------------------------------------------------

def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def distance(a: list[float], b: list[float]) -> float:
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)))


def paper_kvmerger(keys: list[list[float]], values: list[list[float]], scores: list[float], threshold: float,
                   slots: int, heavy: int) -> list[tuple[list[float], list[float], list[int], list[float]]]:
    """KVMerger (Wang et al., 2024) on one head, with the budget rule of baselines/kv/kvmerger.py. The `heavy` most
    attended tokens stand alone; Algorithm 1 scans from the last token back to the first, a token joining the set
    of the token after it when their keys' cosine similarity reaches the threshold; each set's pivot is its most
    attended token; sets are merged least important (pivot score) first, the last in part (a run centred on its
    pivot), then the least attended entries are evicted; a merged set is sum_i w_i x_i, w_i proportional to
    exp(-||k_i - k_p||^2 / (2 sigma^2)), sigma = sum_i ||k_i - k_p|| / (sqrt(2) |S|). Returns, in sequence order,
    (key, value, members, weights) of every entry kept."""
    n = len(keys)
    alone = set(sorted(range(n), key=lambda i: -scores[i])[:min(heavy, slots)])
    sets, current = [], [n - 1]
    for i in range(n - 2, -1, -1):
        if cosine(keys[i], keys[i + 1]) >= threshold and i not in alone and i + 1 not in alone:
            current.insert(0, i)
        else:
            sets.insert(0, current)
            current = [i]
    sets.insert(0, current)
    pivots = [max(s, key=lambda i: scores[i]) for s in sets]
    onto = list(range(n))
    excess = n - slots
    for j in sorted(range(len(sets)), key=lambda j: scores[pivots[j]]):
        if excess == 0:
            break
        s, p = sets[j], pivots[j]
        if len(s) - 1 <= excess:
            run = s
        else:
            first = min(max(p - excess // 2, s[0]), s[-1] - excess)
            run = list(range(first, first + excess + 1))
        for i in run:
            onto[i] = p
        excess -= len(run) - 1
    kept = sorted(set(onto))
    if len(kept) > slots:
        kept = sorted(sorted(kept, key=lambda r: -scores[r])[:slots])
    out = []
    for r in kept:
        members = [i for i in range(n) if onto[i] == r]
        sigma = sum(distance(keys[i], keys[r]) for i in members) / (math.sqrt(2) * len(members))
        g = [math.exp(-distance(keys[i], keys[r]) ** 2 / (2 * sigma ** 2)) if sigma > 0 else 1.0 for i in members]
        w = [x / sum(g) for x in g]
        key = [sum(wi * keys[i][c] for wi, i in zip(w, members, strict=True)) for c in range(len(keys[0]))]
        value = [sum(wi * values[i][c] for wi, i in zip(w, members, strict=True)) for c in range(len(values[0]))]
        out.append((key, value, members, w))
    return out


def paper_chelsea(keys: list[list[float]], values: list[list[float]], sizes: list[int], slots: int, chunk: int
                  ) -> list[tuple[list[float], list[float], list[int], list[float]]]:
    """Chelsea (Hu et al., 2025) on one head: chunks of about `chunk` entries, each keeping one entry plus its
    length-proportional part of the rest (cumulative floors); inside a chunk, rounds of Chunked Soft Matching:
    the current clusters alternately into A (1st, 3rd, ...) and B (2nd, 4th, ...), each A cluster matched to the B
    cluster of most cosine-similar centroid key, the most similar pairs (as many as the chunk must still lose, at
    most |A|) merged A into B; a cluster becomes the size-weighted mean of its tokens. Returns, in sequence order,
    (key, value, members, weights) of every centroid."""
    n = len(keys)
    pieces = max(1, min(-(-n // chunk), slots))
    bounds = [n * j // pieces for j in range(pieces + 1)]
    extra, room = slots - pieces, n - pieces

    def centroid(members: list[int], rows: list[list[float]]) -> list[float]:
        total = sum(sizes[i] for i in members)
        return [sum(sizes[i] * rows[i][c] for i in members) / total for c in range(len(rows[0]))]

    out, before = [], 0
    for j in range(pieces):
        upto = extra * (bounds[j + 1] - j - 1) // room
        share = 1 + upto - before
        before = upto
        clusters = [[i] for i in range(bounds[j], bounds[j + 1])]
        while len(clusters) > share:
            side_a, side_b = clusters[0::2], clusters[1::2]
            edges = []
            for a in side_a:
                sims = [cosine(centroid(a, keys), centroid(b, keys)) for b in side_b]
                best = max(range(len(side_b)), key=lambda t: sims[t])
                edges.append((sims[best], a, side_b[best]))
            chosen = sorted(edges, key=lambda e: -e[0])[:min(len(side_a), len(clusters) - share)]
            for _, a, b in chosen:
                b.extend(a)
            gone = [id(a) for _, a, _ in chosen]
            clusters = [c for c in clusters if id(c) not in gone]
        for c in clusters:
            members = sorted(c)
            total = sum(sizes[i] for i in members)
            out.append((centroid(members, keys), centroid(members, values), members,
                        [sizes[i] / total for i in members]))
    return out


# --- the rules on random tensors ---------------------------------------------------------------------------------

def runs_of_keys(n: int, gen: torch.Generator) -> torch.Tensor:
    """Keys (n, DIM) in runs of 1-6 near-copies of a random direction, so adjacent keys are sometimes similar."""
    rows = []
    while len(rows) < n:
        base = torch.randn(DIM, generator=gen)
        for _ in range(int(torch.randint(1, 7, (1,), generator=gen))):
            rows.append(base + 0.35 * torch.randn(DIM, generator=gen))
    return torch.stack(rows[:n])


@pytest.mark.parametrize(("seed", "threshold", "slots", "heavy"),
                         [(0, 0.8, 15, 7), (1, 0.8, 20, 0), (2, 0.95, 12, 4), (3, 0.5, 9, 3), (4, -1.0, 10, 5)])
def test_kvmerger_plan_matches_the_paper(seed, threshold, slots, heavy):
    gen = torch.Generator().manual_seed(seed)
    keys, values, scores = runs_of_keys(40, gen), torch.randn(40, DIM, generator=gen), torch.rand(40, generator=gen)
    (owner, weight), counts = kvmerger_plan(keys, scores, threshold, slots, heavy)
    expected = paper_kvmerger(keys.tolist(), values.tolist(), scores.tolist(), threshold, slots, heavy)
    assert len(expected) == slots and int(owner.max()) == slots - 1
    for slot, (_, _, members, w) in enumerate(expected):
        assert torch.nonzero(owner == slot).flatten().tolist() == members
        assert weight[owner == slot].tolist() == pytest.approx(w, abs=1e-5)
    assert counts["merged"] + counts["evicted"] == 40 - slots
    if threshold == 0.95:
        assert counts["evicted"] > 0  # keys too dissimilar at this threshold: the budget needed eviction too
    if threshold == -1.0:
        assert counts["evicted"] == 0  # one set of everything: merging alone, the last set only in part


def synthetic_call(layer: DynamicLayer, gen: torch.Generator, window: int) -> tuple[LayerCall, WindowInputs]:
    """A layer call on a small GQA attention (6 query heads over 2 KV heads) whose window queries come from random
    hidden states, as `WindowInputs.queries` recomputes them."""
    module = torch.nn.Module()
    module.q_proj = torch.nn.Linear(HIDDEN, Q_HEADS * DIM, bias=False)
    with torch.no_grad():
        module.q_proj.weight.copy_(torch.randn(Q_HEADS * DIM, HIDDEN, generator=gen) * 0.5)
    module.head_dim, module.scaling = DIM, DIM ** -0.5
    module.config = SimpleNamespace(num_attention_heads=Q_HEADS, num_hidden_layers=1)
    angles = torch.rand(1, window, DIM, generator=gen) * 6
    inputs = WindowInputs(torch.randn(1, window, HIDDEN, generator=gen), angles.cos(), angles.sin())
    cache = DynamicCache()
    cache.layers = [layer]
    call = LayerCall(0, "context", module, inputs.hidden, (inputs.cos, inputs.sin), torch.arange(window), cache, {})
    return call, inputs


def filled(layer: DynamicLayer, length: int, gen: torch.Generator) -> DynamicLayer:
    layer.update(torch.stack([runs_of_keys(length, gen) for _ in range(KV_HEADS)]).unsqueeze(0),
                 torch.randn(1, KV_HEADS, length, DIM, generator=gen))
    return layer


def window_votes(queries: torch.Tensor, keys: torch.Tensor, h: int, prefix: int) -> list[float]:
    """Attention the window queries (1, Q_HEADS, w, d) pay keys[0, h, j] for j < prefix: summed over the window
    (query i sits at index L - w + i and sees keys up to it), averaged over the KV head's query heads."""
    length, w, group = keys.shape[2], queries.shape[2], Q_HEADS // KV_HEADS
    votes = [0.0] * prefix
    for qh in range(h * group, (h + 1) * group):
        for i in range(w):
            visible = length - w + i + 1
            logits = [float(queries[0, qh, i] @ keys[0, h, j]) / math.sqrt(DIM) for j in range(visible)]
            top = max(logits)
            exps = [math.exp(x - top) for x in logits]
            for j in range(prefix):
                votes[j] += exps[j] / sum(exps) / group
    return votes


def check_merged_prefix(layer: DynamicLayer, before_keys: torch.Tensor, before_values: torch.Tensor,
                        expected_per_head: list[list[tuple]], start: int, slots: int) -> None:
    """Slots [start, start + slots) of each head equal the transcription's merged entries, each a convex
    combination of its members (weights >= 0, sum 1); an entry of one member with weight 1 is bit-exact."""
    for h, expected in enumerate(expected_per_head):
        assert len(expected) == slots
        for s, (key, value, members, w) in enumerate(expected):
            assert min(w) >= 0 and sum(w) == pytest.approx(1.0)
            got_k, got_v = layer.keys[0, h, start + s], layer.values[0, h, start + s]
            assert got_k.tolist() == pytest.approx(key, abs=1e-5)
            assert got_v.tolist() == pytest.approx(value, abs=1e-5)
            mixed = sum(wi * before_keys[0, h, start + i] for wi, i in zip(w, members, strict=True))
            assert torch.allclose(got_k, mixed, atol=1e-5)
            if len(members) == 1:
                assert torch.equal(got_k, before_keys[0, h, start + members[0]])
                assert torch.equal(got_v, before_values[0, h, start + members[0]])


def test_kvmerger_compress_merges_to_exactly_the_target_and_leaves_the_rest():
    gen = torch.Generator().manual_seed(5)
    length, end, window = 50, 44, 5  # entries 44..49 stand for a new prompt: never touched
    layer = filled(DynamicLayer(), length, gen)
    call, inputs = synthetic_call(layer, gen, window)
    method = KVMerger(KVMergerParams(budget=20, window=window, threshold=0.8, heavy=0.4))
    before_keys, before_values, before_bytes = layer.keys.clone(), layer.values.clone(), tensor_bytes(layer)
    method.compress(call, end, inputs)
    keep, prefix, slots = 20, end - window, 20 - window
    assert layer.keys.shape == layer.values.shape == (1, KV_HEADS, keep + length - end, DIM)
    assert tensor_bytes(layer) == before_bytes * (keep + length - end) // length  # the memory really fell
    assert torch.equal(layer.keys[:, :, slots:], before_keys[:, :, prefix:])  # window and prompt, bit-exact
    assert torch.equal(layer.values[:, :, slots:], before_values[:, :, prefix:])
    queries = inputs.queries(call.module).detach()
    expected = [paper_kvmerger(before_keys[0, h, :prefix].tolist(), before_values[0, h, :prefix].tolist(),
                               window_votes(queries, before_keys[:, :, :end], h, prefix), 0.8, slots,
                               math.floor(0.4 * slots)) for h in range(KV_HEADS)]
    assert any(len(entry[2]) > 1 for head in expected for entry in head)  # something was really merged
    check_merged_prefix(layer, before_keys, before_values, expected, 0, slots)
    assert sum(call.state["merging"][0].values()) == KV_HEADS * (prefix - slots)


@pytest.mark.parametrize(("seed", "slots", "chunk"), [(0, 13, 8), (1, 20, 16), (2, 3, 8), (3, 30, 64)])
def test_chelsea_plan_matches_the_paper(seed, slots, chunk):
    gen = torch.Generator().manual_seed(seed)
    keys, values = runs_of_keys(37, gen), torch.randn(37, DIM, generator=gen)
    sizes = torch.randint(1, 4, (37,), generator=gen, dtype=torch.int32)
    owner, weight = chelsea_plan(keys, sizes, slots, chunk)
    expected = paper_chelsea(keys.tolist(), values.tolist(), sizes.tolist(), slots, chunk)
    assert len(expected) == slots and sorted(owner.unique().tolist()) == list(range(slots))
    for slot, (_, _, members, w) in enumerate(expected):
        assert torch.nonzero(owner == slot).flatten().tolist() == members
        assert weight[owner == slot].tolist() == pytest.approx(w, abs=1e-6)


def test_chelsea_compress_keeps_sinks_and_window_and_sums_sizes():
    gen = torch.Generator().manual_seed(7)
    length, end, window, sinks = 50, 44, 5, 2
    layer = filled(SizedLayer(), length, gen)
    layer.sizes = torch.randint(1, 4, (1, KV_HEADS, length), generator=gen, dtype=torch.int16)  # an earlier turn's
    call, _ = synthetic_call(layer, gen, window)
    method = Chelsea(ChelseaParams(budget=20, window=window, sinks=sinks, chunk=8))
    before_keys, before_values, before_sizes = layer.keys.clone(), layer.values.clone(), layer.sizes.clone()
    method.compress(call, end, None)
    keep, stop, slots = 20, end - window, 20 - window - sinks
    held = keep + length - end
    assert layer.keys.shape == layer.values.shape == (1, KV_HEADS, held, DIM) and layer.sizes.shape == (1, 2, held)
    for part, before in ((layer.keys, before_keys), (layer.values, before_values), (layer.sizes, before_sizes)):
        assert torch.equal(part[:, :, :sinks], before[:, :, :sinks])  # the sinks, bit-exact
        assert torch.equal(part[:, :, sinks + slots:], before[:, :, stop:])  # the window and the prompt
    expected = [paper_chelsea(before_keys[0, h, sinks:stop].tolist(), before_values[0, h, sinks:stop].tolist(),
                              before_sizes[0, h, sinks:stop].tolist(), slots, 8) for h in range(KV_HEADS)]
    check_merged_prefix(layer, before_keys, before_values, expected, sinks, slots)
    for h, head in enumerate(expected):  # each centroid stands for the tokens of its members
        assert layer.sizes[0, h, sinks:sinks + slots].tolist() == [
            sum(int(before_sizes[0, h, sinks + i]) for i in members) for _, _, members, _ in head]
    assert int(layer.sizes.sum()) == int(before_sizes.sum())


def test_size_bias_equals_attending_to_duplicated_entries():
    """+log(s) on an entry's logits is attention over s copies of it: proportional attention, causal for the new."""
    gen = torch.Generator().manual_seed(3)
    keys, values = torch.randn(1, KV_HEADS, 5, DIM, generator=gen), torch.randn(1, KV_HEADS, 5, DIM, generator=gen)
    sizes = torch.tensor([[[1, 3, 1, 2, 1], [4, 1, 1, 1, 2]]], dtype=torch.int32)
    new_k, new_v = torch.randn(1, KV_HEADS, 3, DIM, generator=gen), torch.randn(1, KV_HEADS, 3, DIM, generator=gen)
    queries = torch.randn(1, Q_HEADS, 3, DIM, generator=gen)
    group = Q_HEADS // KV_HEADS
    mask = size_bias_mask(sizes, Q_HEADS, 3)
    all_k = torch.cat([keys, new_k], dim=2).repeat_interleave(group, dim=1)
    all_v = torch.cat([values, new_v], dim=2).repeat_interleave(group, dim=1)
    out = torch.nn.functional.scaled_dot_product_attention(queries, all_k, all_v, attn_mask=mask)
    for qh in range(Q_HEADS):
        h = qh // group
        copies = [j for j in range(5) for _ in range(int(sizes[0, h, j]))]
        for i in range(3):
            k = torch.cat([keys[0, h, copies], new_k[0, h, :i + 1]])
            v = torch.cat([values[0, h, copies], new_v[0, h, :i + 1]])
            expected = torch.softmax(queries[0, qh, i] @ k.T / math.sqrt(DIM), dim=-1) @ v
            assert torch.allclose(out[0, qh, i], expected, atol=1e-5)


def test_bad_parameters_are_refused_in_one_line(tmp_path):
    for name, setting, word in (("chelsea", "chunk=1", "chunk"), ("kvmerger", "threshold=1.5", "threshold")):
        result = run_cli("eval", "--method", name, "--param", setting, "--task", "multiturn", "--limit", "1",
                         "--out", str(tmp_path))
        assert_usage_error(result, word, tmp_path)


# --- the real embedded model -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["kvmerger", "chelsea"])
@pytest.mark.parametrize(("mode", "compression"), [("multi-turn", "query-agnostic"), ("multi-turn", "query-aware"),
                                                   ("multi-request", "query-agnostic"),
                                                   ("multi-request", "query-aware")])
def test_every_turn_is_answered_from_about_half_the_cache(embedded, name, mode, compression):
    _, measures, _ = run_task(embedded, build_method(name, ["ratio=0.5"]), mode=mode, episodes=1,
                              context_tokens=128, max_new_tokens=4, compression=compression)
    assert len(measures) == 4 and all(m.error is None and m.prediction and m.output_tokens > 0 for m in measures)
    per_token, held = kv_bytes_per_token(embedded.config, embedded.dtype), 0
    for m in measures:  # against what the uncompressed cache of the same tokens holds
        held = (held if mode == "multi-turn" else 0) + m.prompt_tokens + m.output_tokens
        share = m.kv_bytes / ((m.context_tokens + held) * per_token)
        assert (0.3 if mode == "multi-turn" else 0.4) < share < 0.65, (m.turn, share)


PASSKEYS = {"red door": "63075", "grey cupboard": "73691", "silver locker": "49755"}


def teacher_forced_passkeys(model: LoadedModel, method: KVMethod, query_aware: bool) -> list[list[bool]]:
    """Per needle, whether each of the answer's tokens (' ', five digits, '.') is the argmax when the true answer is
    fed one token at a time after the question: a passkey found whole is all True."""
    tok = model.tokenizer
    filler = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. " * 4
    text = filler + "".join(f"The pass key for the {n} is {k}. Remember it. {k} is the pass key for the {n}. " + filler
                            for n, k in PASSKEYS.items())
    hooks = LayerHooks(model.model)
    found = []
    try:
        session = KVSession(model, method, hooks, query_aware=query_aware)
        with torch.inference_mode():
            session.forward(tok(text)["input_ids"], "context")
            snap = session.snapshot()
            for name, key in PASSKEYS.items():
                session.restore(snap)
                answer = tok(" " + key + ".")["input_ids"]
                logits = [session.forward(tok(f"\nWhat is the pass key for the {name}? The pass key for the {name} "
                                              "is")["input_ids"], "query")]
                logits += [session.forward([t], "decode") for t in answer[:-1]]
                found.append([int(lg.argmax()) == t for lg, t in zip(logits, answer, strict=True)])
    finally:
        hooks.remove()
    return found


def test_passkeys_survive_half_the_cache_when_the_question_is_known(embedded):
    """Ratio 0.5, query-aware, three needles in ~490 tokens (the uncompressed model finds all three whole).
    Measured: KVMerger finds one passkey whole and 18 of the 21 answer tokens; Chelsea, which never looks at the
    question, 12 of 21 with every first digit right (with its attention sinks merged too, sinks=0, it misses one).
    Keeping only sinks and the recent half (StreamingLLM at 0.5) gets the passkey inside its window and neither
    other first digit: 11 of 21."""
    kvmerger = teacher_forced_passkeys(embedded, build_method("kvmerger", ["ratio=0.5"]), True)
    assert any(all(needle) for needle in kvmerger) and sum(map(sum, kvmerger)) >= 16, kvmerger
    chelsea = teacher_forced_passkeys(embedded, build_method("chelsea", ["ratio=0.5"]), True)
    assert all(needle[1] for needle in chelsea) and sum(map(sum, chelsea)) >= 10, chelsea
