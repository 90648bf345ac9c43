"""Chat-template splitting, result files, intervals and task definitions."""

from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from cachebench.engine.chat import ChatFormat
from cachebench.errors import UsageError
from cachebench.results import SCHEMA, read_results, write_atomic
from cachebench.stats import cluster_bootstrap_ci
from cachebench.taskspec import all_tasks, groups, resolve_tasks


def test_chat_pieces_reassemble_the_template(embedded):
    tok = embedded.tokenizer
    chat = ChatFormat(tok)
    first = chat.context("CONTEXT") + chat.query("\n\nQ1")
    assert first == tok.apply_chat_template([{"role": "user", "content": "CONTEXT\n\nQ1"}], tokenize=False,
                                            add_generation_prompt=True)
    conversation = first + "A1" + chat.followup("Q2")
    assert conversation == tok.apply_chat_template(
        [{"role": "user", "content": "CONTEXT\n\nQ1"}, {"role": "assistant", "content": "A1"},
         {"role": "user", "content": "Q2"}], tokenize=False, add_generation_prompt=True)


def test_plain_format_without_template():
    class NoTemplate:
        chat_template = None

    chat = ChatFormat(NoTemplate())
    assert chat.context("C") == "C" and chat.query("Q").startswith("Q") and chat.followup("Q2").startswith("\n\n")


def rows(n, **extra):
    return [{"run_id": "r", "episode_id": f"e{i // 2}", "turn": i % 2, "task": "t", "method": "m", "score": i % 2,
             "references": ["x"], **extra} for i in range(n)]


def test_atomic_write_keeps_the_old_file_when_a_write_fails(tmp_path, monkeypatch):
    path = write_atomic(rows(4), tmp_path / "run.parquet")
    assert pq.read_table(path).num_rows == 4

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("cachebench.results.pq.write_table", broken)
    with pytest.raises(OSError):
        write_atomic(rows(6), path)
    assert pq.read_table(path).num_rows == 4  # the earlier, complete file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["run.parquet"]  # no temporary left behind


def test_reading_checks_the_schema_version(tmp_path):
    import pyarrow as pa

    write_atomic(rows(2), tmp_path / "a" / "one.parquet")
    write_atomic(rows(3), tmp_path / "b.parquet")
    assert read_results([tmp_path]).num_rows == 5
    table = pa.table({"x": [1]})
    pq.write_table(table, tmp_path / "foreign.parquet")
    with pytest.raises(UsageError, match="not a cachebench result file"):
        read_results([tmp_path / "foreign.parquet"])
    old = pa.Table.from_pylist(rows(1), schema=SCHEMA).replace_schema_metadata({b"cachebench.schema_version": b"0"})
    pq.write_table(old, tmp_path / "old.parquet")
    with pytest.raises(UsageError, match="schema version 0"):
        read_results([tmp_path / "old.parquet"])


def test_cluster_bootstrap_interval():
    scores = [1.0] * 30 + [0.0] * 10
    clusters = [f"e{i // 4}" for i in range(40)]
    mean, low, high = cluster_bootstrap_ci(scores, clusters, seed=1)
    assert mean == 0.75 and low < mean < high and high <= 1.0
    assert cluster_bootstrap_ci(scores, clusters, seed=1) == (mean, low, high)
    # clustered resampling is wider than treating correlated turns as independent
    independent = cluster_bootstrap_ci(scores, [str(i) for i in range(40)], seed=1)
    assert (high - low) > (independent[2] - independent[1])
    assert all(math.isnan(v) for v in cluster_bootstrap_ci([], []))
    assert np.isnan(cluster_bootstrap_ci([0.5], ["e"])[1])  # one episode: no interval, never a zero-width one


def test_task_definitions_and_groups():
    specs = all_tasks()
    for name in ("multiturn.passkey", "multiturn.kv", "multiturn.prefix_suffix", "multiturn.vt", "multiturn.qa"):
        spec = specs[name]
        assert spec.family == "multiturn" and "{context}" in spec.context_template and "{input}" in spec.query_template
        assert spec.context_tokens > 0 and spec.episodes > 0 and spec.max_new_tokens > 0
    assert [s.name for s in resolve_tasks("multiturn")] == ["multiturn.passkey"]
    assert len(groups(specs)["multiturn-all"]) == 5 and len(groups(specs)["scbench"]) == 12
    with pytest.raises(UsageError, match="did you mean 'multiturn"):
        resolve_tasks("multiturns")


def test_show_escapes_result_strings_and_reports_intervals(tmp_path):
    from rich.console import Console

    from cachebench.show import show, summarize

    hostile = "[bold red]<script>alert(1)</script>[/bold red]"
    data = rows(8, method_params=hostile, model="m", mode="multi-turn", model_weights="random", ttft_ms=5.0,
                kv_bytes=2**20, error=None)
    for index, row in enumerate(data):
        row["score"] = float(index < 3)  # episodes score 1, 0.5, 0, 0: they differ, so the interval has width
    write_atomic(data, tmp_path / "r.parquet")
    cells = summarize([tmp_path])
    assert len(cells) == 1 and cells[0].n == 8 and cells[0].score == 0.375 and cells[0].low < 0.375 < cells[0].high
    console = Console(record=True, width=250)
    show([tmp_path], console)
    text = console.export_text()
    assert hostile in text and "m (random weights)" in text and "1.00" in text


@pytest.mark.parametrize("version", ["1", "2", "3"])
def test_older_files_are_read_with_the_missing_columns_null(tmp_path, version):
    import pyarrow as pa

    from cachebench.results import UPGRADABLE

    lacking = set(UPGRADABLE[version])
    old_schema = pa.schema([f for f in SCHEMA if f.name not in lacking],
                           metadata={b"cachebench.schema_version": version.encode()})
    old_rows = [{k: v for k, v in row.items() if k not in lacking} for row in rows(2)]
    pq.write_table(pa.Table.from_pylist(old_rows, schema=old_schema), tmp_path / "old.parquet")
    write_atomic(rows(1), tmp_path / "current.parquet")
    table = read_results([tmp_path])
    assert table.num_rows == 3
    assert table.schema.names == SCHEMA.names
    assert table.column("reused_disk_tokens").null_count == 3  # rows() sets no tier counts either
    assert ("compression" in lacking) == (version == "1")
    assert table.column("cache_bytes").null_count == 3 and "cache_bytes" in lacking  # v4's semantic columns


def test_random_models_need_only_a_copy_of_the_tokenizer(tmp_path, monkeypatch):
    """A GPU machine without the GGUF package gets the tokenizer files alone; no weights are converted there."""
    import shutil

    from cachebench.models import embedded
    from cachebench.models.loading import load_model

    source = embedded.converted_dir()
    target = tmp_path / "models" / "smollm2-135m-instruct"
    target.mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(source / name, target / name)
    monkeypatch.setenv("CACHEBENCH_CACHE", str(tmp_path))
    model = load_model("random:smollm2-135m", "float32", "cpu", "sdpa")
    assert model.weights == "random" and model.tokenizer("hello")["input_ids"]
    copied = ["chat_template.jinja", "tokenizer.json", "tokenizer_config.json"]
    assert sorted(p.name for p in target.iterdir()) == copied  # nothing converted


def test_show_gives_each_cell_its_request_ttft_over_full(tmp_path):
    """A multi-request row's request TTFT counts its context prefill; a later multi-turn turn's does not."""
    from cachebench.show import summarize

    def cell(method, mode, prefill, ttft):
        return [dict(row, method=method, mode=mode, model="m", model_weights="pretrained", prefill_ms=prefill,
                     ttft_ms=ttft, kv_bytes=1, error=None) for row in rows(4)]

    data = (cell("full", "multi-request", 900.0, 100.0) + cell("prefix", "multi-request", 150.0, 100.0)
            + cell("full", "multi-turn", 900.0, 100.0) + cell("prefix", "multi-turn", 150.0, 100.0))
    write_atomic(data, tmp_path / "r.parquet")
    by_key = {(c.method, c.mode): c for c in summarize([tmp_path])}
    assert by_key[("full", "multi-request")].request_ttft_ms == 1000.0
    assert by_key[("prefix", "multi-request")].ttft_ratio == 0.25
    assert by_key[("full", "multi-turn")].request_ttft_ms == (1000.0 + 100.0) / 2  # turns 0 and 1 alternate
    assert by_key[("prefix", "multi-turn")].ttft_ratio == (250.0 + 100.0) / (1000.0 + 100.0)
