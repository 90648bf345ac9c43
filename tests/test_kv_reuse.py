"""KV reuse on the real embedded model: prefix caching and the chunk-reuse methods against a full prefill.

The equalities are the issue's correctness bar: prefix reuse must serve exactly the KV a full prefill computed (bit
for bit) and so give the full prefill's logits, and CacheBlend with every reused token recomputed must equal a
full prefill. Logits are compared up to the rounding of a differently split computation: computing only the tail
after loaded blocks runs smaller matrix products, which some CPUs (Intel AMX in bf16, and even fp32) round
differently from the one-shot prefill (KL ~1e-3 against ~0.27 for naive chunk reuse); elsewhere they are equal.
The other assertions check that the methods do what their papers say (chunks found again in another order, the
recompute share, the ordering of naive reuse < CacheBlend < full in fidelity) and that a damaged disk tier is
never served.
"""

from __future__ import annotations

import math
import signal
import subprocess
import time

import pyarrow.parquet as pq
import pytest
import torch

from cachebench.engine.chat import ChatFormat
from cachebench.engine.runner import RunSettings, prepare_episodes
from cachebench.engine.session import KVSession
from cachebench.episodes import Episode, Turn
from cachebench.registry import build_method
from cachebench.reuse.store import TieredKVStore
from cachebench.taskspec import resolve_tasks
from tests.conftest import CLI, REPO, run_cli, run_task

CHUNKS = [
    "Document A. The lighthouse at Carrow Point was built in 1871 by the engineer Maud Ellery. Its lamp burned "
    "whale oil until 1902, when it was converted to kerosene. The keeper's cottage now houses a small museum.",
    "Document B. Maud Ellery trained as a surveyor in Glasgow before moving to the coast. She designed four "
    "harbours and two bridges, and her notebooks are kept in the county archive under the reference code EL-4471.",
    "Document C. The ferry from Carrow Point to the island of Inishmore runs twice a day in summer and once a day "
    "in winter. The crossing takes forty minutes, and tickets cost nine pounds for adults.",
    "Document D. Every August the village of Carrow holds a regatta. Boats race around the lighthouse and back, "
    "and the winner receives a silver oar that was first awarded in 1923.",
]
QUESTION = "What is the reference code of the notebooks of the engineer who built the lighthouse?"
ORDERS = ([0, 1, 2, 3], [3, 1, 0, 2], [2, 0, 3, 1])


def prepared(model, order):
    spec = resolve_tasks("multiturn.qa")[0]
    chunks = [CHUNKS[i] for i in order]
    episode = Episode("e", {"context": "\n\n".join(chunks)}, [Turn({"input": QUESTION}, ["EL-4471"])], chunks=chunks)
    return spec, prepare_episodes([episode], spec, model, ChatFormat(model.tokenizer), RunSettings("multi-request"))[0]


def query_logits(model, method, order):
    """The first answer token's logits after the method prefilled the chunked context and the question."""
    spec, episode = prepared(model, order)
    method.attach(model)
    session = KVSession(model, method, None, segments=episode.segments)
    query = ChatFormat(model.tokenizer).query(spec.query_joiner + episode.turn_texts[0])
    with torch.inference_mode():
        method.stage(session, episode.context_ids)
        session.prefill(episode.context_ids, "context")
        logits = session.prefill(model.tokenizer(query, add_special_tokens=False)["input_ids"], "query")
    return logits.float(), session


def kl_from(reference: torch.Tensor, logits: torch.Tensor) -> float:
    return float(torch.nn.functional.kl_div(logits.log_softmax(-1), reference.log_softmax(-1), log_target=True,
                                            reduction="sum"))


def assert_same_as_full(logits: torch.Tensor, full: torch.Tensor) -> None:
    """The full prefill's next token and distribution, up to the rounding of a differently split computation."""
    assert int(logits.argmax()) == int(full.argmax())
    assert kl_from(full, logits) < 0.01, kl_from(full, logits)


def assert_served_exactly(warm: KVSession, cold: KVSession) -> None:
    """The reused entries are bit for bit what the cold run computed and stored."""
    reused = warm.reuse.reused_tokens
    for served, stored in zip(warm.cache.layers, cold.cache.layers, strict=True):
        assert torch.equal(served.keys[:, :, :reused], stored.keys[:, :, :reused])
        assert torch.equal(served.values[:, :, :reused], stored.values[:, :, :reused])


def test_chunks_are_tokenized_apart_and_marked(embedded):
    _, episode = prepared(embedded, [2, 0, 3, 1])
    chunks = [s for s in episode.segments if s.reusable]
    assert len(chunks) == 4 and episode.segments[-1].end == len(episode.context_ids)
    for segment, index in zip(chunks, [2, 0, 3, 1], strict=True):
        alone = embedded.tokenizer(CHUNKS[index], add_special_tokens=False)["input_ids"]
        assert episode.context_ids[segment.start : segment.end] == alone


def test_cacheblend_with_everything_recomputed_equals_full_prefill(embedded):
    full, _ = query_logits(embedded, build_method("full", []), ORDERS[1])
    blended, session = query_logits(embedded, build_method("cacheblend", ["recompute_ratio=1.0"]), ORDERS[1])
    torch.testing.assert_close(blended, full, rtol=0, atol=1e-5)
    chunk_tokens = sum(len(embedded.tokenizer(c, add_special_tokens=False)["input_ids"]) for c in CHUNKS)
    assert session.reuse.reused_tokens == chunk_tokens
    assert session.reuse.recomputed_tokens >= chunk_tokens - 1  # the last context token counts as new text


def test_prefix_reuse_gives_exactly_the_full_prefill_logits(embedded):
    full, _ = query_logits(embedded, build_method("full", []), ORDERS[0])
    method = build_method("prefix", ["block_tokens=16"])
    cold, cold_session = query_logits(embedded, method, ORDERS[0])
    warm, warm_session = query_logits(embedded, method, ORDERS[0])
    assert cold_session.reuse.reused_tokens == 0
    _, episode = prepared(embedded, ORDERS[0])
    assert warm_session.reuse.reused_tokens == (len(episode.context_ids) - 1) // 16 * 16
    assert warm_session.reuse.tier_tokens["device"] == warm_session.reuse.reused_tokens
    assert torch.equal(cold, full)
    assert_served_exactly(warm_session, cold_session)
    assert_same_as_full(warm, full)
    _, other_order = query_logits(embedded, method, ORDERS[1])  # only the shared start is a prefix
    assert 0 < other_order.reuse.reused_tokens < warm_session.reuse.reused_tokens


def test_chunk_methods_find_chunks_in_any_order_and_cacheblend_beats_naive_reuse(embedded):
    naive, kvlink = build_method("naive-concat", []), build_method("kvlink", [])
    blends = {ratio: build_method("cacheblend", [f"recompute_ratio={ratio}"]) for ratio in (0.15, 0.3)}
    divergence: dict[str, list[float]] = {"naive": [], "kvlink": [], 0.15: [], 0.3: []}
    for order in ORDERS:
        full, _ = query_logits(embedded, build_method("full", []), order)
        for name, method in [("naive", naive), ("kvlink", kvlink), *blends.items()]:
            logits, session = query_logits(embedded, method, order)
            divergence[name].append(kl_from(full, logits))
            reused = session.reuse.reused_tokens
            assert reused == sum(s.end - s.start for s in prepared(embedded, order)[1].segments if s.reusable)
            expected = 0 if name in ("naive", "kvlink") else math.ceil(name * (reused - 1))
            assert session.reuse.recomputed_tokens == expected
    mean = {name: sum(values) / len(values) for name, values in divergence.items()}
    # CacheBlend's claim: recomputing a few high-deviation tokens restores cross-chunk attention naive reuse lacks
    assert mean[0.3] < mean["naive"] and mean[0.15] < mean["naive"]
    # chunks encoded alone (training-free KVLink) lose the prompt's start as attention sink: worse than naive
    assert mean["kvlink"] > mean["naive"]


def test_a_damaged_disk_block_is_discarded_and_recomputed_never_served(embedded, tmp_path):
    args = ["block_tokens=16", "disk_mb=64", f"disk_dir={tmp_path}", "device_mb=0", "cpu_mb=0"]
    full, _ = query_logits(embedded, build_method("full", []), ORDERS[0])
    writer = build_method("prefix", args)
    query_logits(embedded, writer, ORDERS[0])
    files = sorted((tmp_path / writer.store.namespace).glob("*.safetensors"))
    assert len(files) >= 10
    by_position = {int(_meta(f)["first_position"]): f for f in files}
    truncated = by_position[48]
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])

    reader = build_method("prefix", args)  # a new run: a new store over the same folder
    logits, session = query_logits(embedded, reader, ORDERS[0])
    assert_same_as_full(logits, full)
    assert session.reuse.reused_tokens == 48 and session.reuse.tier_tokens["disk"] == 48  # stops at the damage
    assert reader.store.stats.corrupt == 1  # detected and deleted; the recomputed block was then stored again:
    assert _meta(truncated)["first_position"] == "48"

    flipped = by_position[96]  # rewritten intact by the run above; now one byte of its tensor data flips
    data = bytearray(flipped.read_bytes())
    data[-100] ^= 0xFF
    flipped.write_bytes(bytes(data))
    third = build_method("prefix", args)
    logits, session = query_logits(embedded, third, ORDERS[0])
    assert_same_as_full(logits, full)
    assert third.store.stats.corrupt == 1 and session.reuse.reused_tokens == 96


def test_a_killed_run_leaves_the_disk_tier_readable_and_the_next_run_serves_it(embedded, tmp_path):
    """SIGKILL a real `cachebench eval` while it writes blocks; every file left must verify, and a new run over
    the folder must take blocks from disk."""
    folder = tmp_path / "kv"
    args = ["eval", "--method", "prefix", "--task", "rag.passages", "--param", "block_tokens=16",
            "--param", "disk_mb=512", "--param", f"disk_dir={folder}", "-q"]
    writer = subprocess.Popen([*CLI, *args, "--limit", "8", "--out", str(tmp_path / "first")], cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and len(list(folder.rglob("*.safetensors"))) < 60 and writer.poll() is None:
        time.sleep(0.02)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    files = list(folder.rglob("*.safetensors"))
    assert len(files) >= 60
    namespace = files[0].parent.name
    store = TieredKVStore(namespace, torch.device("cpu"), embedded.dtype, 0, 0, folder, 2**30)  # the CLI's dtype
    assert all(store.get(path.stem) is not None for path in files)
    assert store.stats.corrupt == 0

    result = run_cli(*args, "--limit", "2", "--out", str(tmp_path / "second"))
    assert result.returncode == 0, result.stderr
    rows = pq.read_table(tmp_path / "second").to_pylist()
    assert all(row["error"] is None for row in rows)
    assert sum(row["reused_disk_tokens"] for row in rows if row["turn"] == 0) > 0  # blocks the killed run wrote


def _meta(path):
    import json

    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return json.loads(handle.metadata()["meta"])


@pytest.mark.parametrize("mode", ["multi-request", "multi-turn"])
def test_every_reuse_method_runs_the_multiturn_task(embedded, mode):
    """Flat contexts are cut into fixed chunks; in multi-request mode every request is served from the store."""
    for name in ("prefix", "naive-concat", "kvlink", "cacheblend"):
        method = build_method(name, ["block_tokens=32"] if name == "prefix" else ["chunk_tokens=128"])
        method.attach(embedded)  # as run_eval does once per run
        prepared, measures, _ = run_task(embedded, method, "multiturn.passkey", mode=mode, episodes=1)
        assert all(m.error is None for m in measures) and len(measures) == 4
        context = len(prepared[0].context_ids)
        if mode == "multi-request":  # turns 1-3 re-prefill the context from the store: (nearly) all of it reused
            assert all(m.reused_tokens >= context - 128 for m in measures[1:]), name
            assert all(m.reuse_tier_tokens.get("device", 0) == m.reused_tokens for m in measures), name
        else:  # one context prefill, on turn 0; later turns compute only their own prompt
            assert all(m.reused_tokens == 0 for m in measures[1:]), name
        if name == "prefix":
            assert measures[0].reused_tokens == 0  # the first context of the run has nothing stored yet
        if name == "cacheblend":
            assert all(m.recomputed_tokens == math.ceil(0.15 * (m.reused_tokens - 1)) or m.reused_tokens == 0
                       for m in measures)


def test_the_users_example_runs_and_fills_the_reuse_columns(tmp_path):
    """`cachebench eval --method cacheblend --task multiturn`, one episode, as a user types it."""
    result = run_cli("eval", "--method", "cacheblend", "--task", "multiturn", "--limit", "1", "--mode",
                     "multi-request", "--out", str(tmp_path), "-q")
    assert result.returncode == 0, result.stderr
    rows = pq.read_table(tmp_path).to_pylist()
    assert len(rows) == 4 and all(row["error"] is None for row in rows)
    for row in rows:
        tiers = row["reused_device_tokens"] + row["reused_cpu_tokens"] + row["reused_disk_tokens"]
        assert row["reused_tokens"] > 0 and tiers == row["reused_tokens"] and row["reuse_load_ms"] >= 0
        assert 0 < row["recomputed_tokens"] < row["reused_tokens"]
        assert row["prefill_ms"] > 0 and row["method"] == "cacheblend"
