"""KV reuse on the real embedded model: prefix caching and the chunk-reuse methods against a full prefill.

The equalities are the issue's correctness bar: prefix reuse must serve exactly the KV a full prefill computed (bit
for bit) and so give the full prefill's logits, and CacheBlend with every reused token recomputed must equal a
full prefill. Logits are compared up to the rounding of a differently split computation: computing only the tail
after loaded blocks runs smaller matrix products, which some CPUs (Intel AMX in bf16, and even fp32) round
differently from the one-shot prefill (KL ~1e-3 against ~0.27 for naive chunk reuse); elsewhere they are equal.
The other assertions check that the methods do what their papers say (chunks found again in another order, the
recompute share, the ordering of naive reuse < CacheBlend < full in fidelity) and that a damaged disk tier is
never served; and every registered reuse method (`reuses_kv`) runs a task through `run_eval` in both modes with
honest counters.
"""

from __future__ import annotations

import io
import math
import signal
import subprocess
import time

import pyarrow.parquet as pq
import pytest
import torch
from rich.console import Console

from cachebench.engine.chat import ChatFormat
from cachebench.engine.runner import RunSettings, prepare_episodes
from cachebench.engine.session import KVSession
from cachebench.episodes import Episode, Turn
from cachebench.eval_run import run_eval
from cachebench.models.anatomy import kv_bytes_per_token
from cachebench.registry import build_method
from cachebench.results import REUSE_TIERS, read_results
from cachebench.reuse.store import TieredKVStore
from cachebench.runs import EvalRequest
from cachebench.show import show
from cachebench.taskspec import resolve_tasks
from tests.conftest import CLI, REPO, declared, methods_where, run_cli

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


# Every registered method that serves contexts from a store (a new one is tested here without being listed), with
# blocks and chunks small enough that a short context holds several, where the method takes such sizes.
REUSING = methods_where("kv", lambda cls: cls.reuses_kv)
SMALL_BLOCKS = {"block_tokens": 32, "chunk_tokens": 64}


@pytest.mark.parametrize("mode", ["multi-request", "multi-turn"])
@pytest.mark.parametrize("name", REUSING)
def test_every_reuse_method_serves_requests_from_its_store_and_reports_it(embedded, tmp_path, name, mode):
    """A run as `cachebench eval` makes it (rows written, `show` reads them back): in multi-request mode every
    request's context comes from the store again, so from the second request on most of it is reused; in
    multi-turn mode the context is prefilled once and later turns reuse nothing. Either way the cache holds the
    whole request (reuse saves compute, not memory) and the counters agree with each other."""
    request = EvalRequest(method=name, task="multiturn.passkey", mode=mode, limit=1, context_tokens=256,
                          max_new_tokens=8, out=tmp_path)
    outcome = run_eval(request, model=embedded, method=build_method(name, declared(name, SMALL_BLOCKS)))
    rows = read_results([tmp_path]).to_pylist()
    assert outcome.errors == 0 and len(rows) == 4 and [row["error"] for row in rows] == [None] * 4
    assert [row["prediction"] for row in rows] == [row["prediction"] for row in outcome.rows]
    per_token = kv_bytes_per_token(embedded.config, embedded.dtype)
    held = 0
    for row in rows:
        assert row["prediction"] and row["output_tokens"] > 0 and row["method"] == name
        context, reused = row["context_tokens"], row["reused_tokens"]
        if mode == "multi-request" or row["turn"] == 0:  # this request's context was served by the method
            assert 0 <= reused < context and 0 <= row["recomputed_tokens"] <= reused, row["turn"]
            assert row["prefill_ms"] > 0
            if row["turn"] > 0:  # the same context again: (most of) it comes from the store
                assert reused >= context // 2, (row["turn"], reused, context)
        else:
            assert reused == 0 and row["recomputed_tokens"] == 0, row["turn"]
        if reused:
            assert sum(row[f"reused_{tier}_tokens"] for tier in REUSE_TIERS) == reused and row["reuse_load_ms"] >= 0
        # the cache after the reply: the context, the request (or, multi-turn, every turn so far) and the reply
        # less its last token where the reply was cut short (never fed; a multi-turn cache takes it with the next
        # prompt, which counts it again)
        held = (held if mode == "multi-turn" else 0) + row["prompt_tokens"] + row["output_tokens"]
        unfed = row["turn"] + 1 if mode == "multi-turn" else 1
        assert (context + held - unfed) * per_token <= row["kv_bytes"] <= (context + held) * per_token, row["turn"]
    shown = io.StringIO()
    show([tmp_path], Console(file=shown, width=250))
    assert any(line.split()[:1] == [name] for line in shown.getvalue().splitlines()), shown.getvalue()
