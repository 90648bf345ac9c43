"""Bad input, as a user types it: each case runs the real command line and must end in exactly one line on stderr
that starts with `error: `, exit code 2, no traceback, no result file, and well before a model could have loaded.

The table holds what outside testers found (a context target past the window built until memory ran out, numbers
that overflow or are NaN, random-model shapes that crashed, a gzip bomb, result files missing or mistyping a
column, `--data` ignored or misread) and the neighbouring cases found while fixing them.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO, run_cli

from cachebench.errors import UsageError
from cachebench.models import embedded
from cachebench.results import METADATA_KEY, SCHEMA, read_results, write_atomic
from cachebench.semantic.stream import StreamRequest
from cachebench.tasks.builders import semantic_gptcache_pairs
from cachebench.tasks.builders.semantic_records import read_local
from cachebench.taskspec import all_tasks

LIMIT = 64 * 1024  # CACHEBENCH_MAX_DATA_BYTES for every case: the bombs below expand far past it
SECONDS = 20  # a model load and a run take longer; a bad input is refused before either
PRESET = REPO / "cachebench" / "models" / "presets" / "smollm2-135m.json"
KV = ["eval", "--method", "full", "--task", "multiturn.passkey", "--limit", "1"]
SEMANTIC = ["eval", "--method", "threshold", "--task", "semantic.stream", "--limit", "1", "--llm-cost-ms", "1"]
RESULT = "{files}/result.parquet"


@dataclass(frozen=True)
class Case:
    """One bad input: the arguments (`{files}` is the folder of bad files made below), a fragment the error line
    must contain, and environment variables beyond the common ones."""

    args: list[str]
    message: str
    env: dict[str, str] = field(default_factory=dict)


RANDOM_CONFIGS = {  # name: (fields changed in the smollm2-135m preset, error fragment)
    "layers-negative": ({"num_hidden_layers": -2}, "num_hidden_layers must be a positive integer, got -2"),
    "heads-zero": ({"num_attention_heads": 0}, "num_attention_heads must be a positive integer, got 0"),
    "hidden-float": ({"hidden_size": 576.5}, "hidden_size must be a positive integer, got 576.5"),
    "hidden-text": ({"hidden_size": "576"}, "hidden_size must be a positive integer, got '576'"),
    "kv-heads-not-dividing": ({"num_key_value_heads": 4}, "num_attention_heads 9 is not a multiple of num_key_value"),
    "layers-huge": ({"num_hidden_layers": 10**9}, "num_hidden_layers 1000000000 is more than 1024"),
    "model-type-unknown": ({"model_type": "nope"}, "unknown model_type 'nope'"),
    # transformers logs two warnings about it before failing; only the error line may reach stderr
    "rope-type-unknown": ({"rope_scaling": {"rope_type": "zzz"}}, "cannot be built: KeyError: 'zzz'"),
}

CASES = {
    # a context target past the window, refused from the model's config before anything is built
    "context-past-window": Case([*KV, "--context-tokens", "100000000"], "8192-token window"),
    "context-past-window-middle": Case([*KV, "--context-tokens", "100000", "--truncate", "middle"],
                                       "4 times the model's 8192-token window"),
    "context-random-preset": Case([*KV, "--model", "random:smollm2-135m", "--context-tokens", "100000000"],
                                  "8192-token window"),
    "context-random-config": Case([*KV, "--model", "random:{files}/window-512.json", "--context-tokens", "1000"],
                                  "512-token window"),
    "context-local-folder": Case([*KV, "--model", "{files}/model", "--context-tokens", "100000000"],
                                 "2048-token window"),
    "max-new-tokens-past-window": Case([*KV, "--max-new-tokens", "9000"], "does not fit the model's 8192-token"),
    "max-new-tokens-zero": Case([*KV, "--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
    # method parameters: int64, finite floats
    "param-int-overflow": Case([*KV, "--method", "snapkv", "--param", "budget=99999999999999999999"],
                               "--param budget=99999999999999999999: out of range"),
    "param-nan": Case([*KV, "--method", "snapkv", "--param", "ratio=nan"], "--param ratio=nan: must be a finite"),
    "param-inf": Case([*KV, "--method", "snapkv", "--param", "ratio=inf"], "--param ratio=inf: must be a finite"),
    "param-minus-inf": Case([*KV, "--method", "snapkv", "--param", "ratio=-inf"], "ratio=-inf: must be a finite"),
    "param-semantic-nan": Case([*SEMANTIC, "--param", "threshold=nan"], "--param threshold=nan: must be a finite"),
    "llm-cost-nan": Case([*SEMANTIC[:-1], "nan"], "--llm-cost-ms 'nan': costs must be finite"),
    # random-model shapes transformers cannot build
    **{f"random-{name}": Case([*KV, "--model", f"random:{{files}}/{name}.json"], message)
       for name, (_, message) in RANDOM_CONFIGS.items()},
    "random-not-an-object": Case([*KV, "--model", "random:{files}/list.json"], "expected a JSON object"),
    # data files: size limits, directories, tasks that generate their data
    "gzip-bomb-semantic": Case([*SEMANTIC, "--task", "semantic.gptcache-pairs", "--data", "{files}/bomb.json.gz"],
                               f"bomb.json.gz: decompresses to more than {LIMIT} bytes"),
    "gzip-bomb-kv": Case([*KV, "--task", "multiturn.scbench_kv", "--data", "{files}/bomb.json.gz"],
                         "CACHEBENCH_MAX_DATA_BYTES"),
    "tar-bomb": Case([*SEMANTIC, "--task", "semantic.gptcache-pairs", "--data", "{files}/bomb.tar.gz"],
                     "bomb.tar.gz: decompresses to more than"),
    "data-too-large": Case([*KV, "--task", "rag.musique", "--data", "{files}/large.jsonl"],
                           f"large.jsonl: holds more than {LIMIT} bytes"),
    "data-limit-not-a-number": Case([*KV, "--task", "rag.musique", "--data", "{files}/bom.csv"],
                                    "CACHEBENCH_MAX_DATA_BYTES=lots: expected a positive number",
                                    {"CACHEBENCH_MAX_DATA_BYTES": "lots"}),
    "data-directory": Case([*KV, "--task", "multiturn.scbench_kv", "--data", "{files}"], "is a directory"),
    "data-directory-semantic": Case([*SEMANTIC, "--task", "semantic.qqp", "--data", "{files}"], "is a directory"),
    "data-on-generated-task": Case([*KV, "--data", "{files}/bom.csv"],
                                   "task multiturn.passkey generates its data; --data applies to tasks that read a "
                                   "dataset: longconvqa.locomo"),
    "data-on-generated-semantic": Case([*SEMANTIC, "--data", "{files}/bom.csv"],
                                       "task semantic.stream generates its data"),
    "data-on-group": Case([*KV, "--task", "scbench", "--data", "{files}/bom.csv"], "scbench is a group of 12 tasks"),
    "data-missing-for-file-task": Case([*KV, "--task", "longconvqa.locomo"], "longconvqa.locomo needs --data FILE"),
    # a record of the wrong shape is found with the tokenizer alone: this model folder has no weights, so the run
    # would end in "cannot load" had the model been loaded first
    "data-bad-record-before-weights": Case([*KV, "--task", "rag.musique", "--data", "{files}/musique.jsonl",
                                            "--model", "{files}/tokenizer-only"],
                                           "record q1: missing 'paragraphs' (expected MuSiQue"),
    # numbers of the run
    "seed-negative": Case([*KV, "--seed", "-1"], "--seed must be between 0 and"),
    "seed-past-int64": Case([*KV, "--seed", str(2**64)], "--seed must be between 0 and"),
    "seed-negative-semantic": Case([*SEMANTIC, "--seed", "-1"], "--seed must be between 0 and"),
    "limit-zero": Case([*KV[:-1], "0"], "--limit must be at least 1"),
    "limit-huge": Case([*KV[:-1], "10000000"], "--limit must be at most 1000000"),
    "out-is-a-file": Case([*KV, "--out", "{files}/bom.csv"], "exists and is not a directory"),
    # result files whose columns do not match their declared schema version
    "show-missing-column": Case(["show", "{files}/missing.parquet"], "missing.parquet: column 'ttft_ms' is missing"),
    "gate-missing-column": Case(["gate", "--baseline", "{files}/missing.parquet", "--candidate", RESULT],
                                "column 'ttft_ms' is missing"),
    "show-text-score": Case(["show", "{files}/text-score.parquet"], "column 'score' is string, expected double"),
    "gate-text-score": Case(["gate", "--baseline", RESULT, "--candidate", "{files}/text-score.parquet"],
                            "text-score.parquet: column 'score' is string"),
    "leaderboard-text-score": Case(["leaderboard", "{files}/text-score.parquet"],
                                   "text-score.parquet: column 'score' is string, expected double"),
}


def _row() -> dict[str, object]:
    """One complete KV row, enough for every reader."""
    return {"run_id": "r", "seed": 0, "task": "multiturn.passkey", "subtask": "passkey", "mode": "multi-turn",
            "method": "full", "method_params": "{}", "model": "m", "episode_id": "e0", "turn": 0, "category": "c",
            "prediction": "1", "references": ["1"], "metric": "first_int", "score": 1.0, "context_tokens": 10,
            "prompt_tokens": 12, "output_tokens": 1, "kv_bytes": 100, "prefill_ms": 1.0, "ttft_ms": 1.0}


def _result_files(folder: Path) -> None:
    """A valid result file, one without a column its version has, and one whose score is text."""
    good = write_atomic([_row()], folder / "result.parquet")
    table = pq.read_table(good)
    metadata = table.schema.metadata
    pq.write_table(table.drop_columns(["ttft_ms"]).replace_schema_metadata(metadata), folder / "missing.parquet")
    index = table.schema.get_field_index("score")
    text = table.set_column(index, pa.field("score", pa.string()), pa.array(["1.0"], pa.string()))
    pq.write_table(text.replace_schema_metadata(metadata), folder / "text-score.parquet")


def _model_files(folder: Path) -> None:
    """random: configs of broken shapes, one of a 512-token window, and a model folder of a 2048-token window."""
    preset = json.loads(PRESET.read_text())
    for name, (changes, _) in RANDOM_CONFIGS.items():
        (folder / f"{name}.json").write_text(json.dumps({**preset, **changes}))
    (folder / "window-512.json").write_text(json.dumps({**preset, "max_position_embeddings": 512}))
    (folder / "list.json").write_text("[1, 2]")
    (folder / "model").mkdir()
    (folder / "model" / "config.json").write_text(json.dumps({**preset, "max_position_embeddings": 2048}))
    tokenizer_only = folder / "tokenizer-only"  # a model folder with a config and a tokenizer but no weights
    tokenizer_only.mkdir()
    (tokenizer_only / "config.json").write_text(PRESET.read_text())
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(embedded.tokenizer_dir() / name, tokenizer_only / name)


def _data_files(folder: Path) -> None:
    """A gzip bomb and a tar.gz bomb (each a few kB expanding past LIMIT), a plain file past LIMIT, a BOM CSV."""
    payload = b"[" + b" " * (16 * LIMIT) + b"]"
    (folder / "bomb.json.gz").write_bytes(gzip.compress(payload))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        member = tarfile.TarInfo("pairs.json")
        member.size = len(payload)
        archive.addfile(member, io.BytesIO(payload))
    (folder / "bomb.tar.gz").write_bytes(buffer.getvalue())
    (folder / "large.jsonl").write_bytes(b'{"id": 1}\n' * (LIMIT // 10 + 1))
    (folder / "musique.jsonl").write_text(json.dumps({"id": "q1", "question": "who?", "answer": "x"}) + "\n")
    (folder / "bom.csv").write_text("origin,similar\nhow do I boil an egg?,how to boil eggs\n", encoding="utf-8-sig")


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """Every bad file the table names, in one folder apart from the run's --out folder."""
    folder = tmp_path / "files"
    folder.mkdir()
    _result_files(folder)
    _model_files(folder)
    _data_files(folder)
    return folder


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_input_is_one_error_line_exit_2_and_nothing_written(case: Case, files: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = [arg.replace("{files}", str(files)) for arg in case.args]
    if args[0] == "eval" and "--out" not in args:
        args += ["--out", str(out)]
    if args[0] == "leaderboard":
        args += ["--out", str(out)]
    env = {"HF_HUB_OFFLINE": "1", "CACHEBENCH_MAX_DATA_BYTES": str(LIMIT), **case.env}
    started = time.monotonic()
    result = run_cli(*args, env=env, timeout=120)
    elapsed = time.monotonic() - started
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.split("\n")
    if lines[-1] == "":
        lines.pop()  # the line's own newline
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and case.message in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert not out.exists() or not list(out.rglob("*.parquet")), "nothing is written for a bad input"
    assert not (out / "index.html").exists()
    assert elapsed < SECONDS, f"{elapsed:.1f} s: the input should be refused before any model loads"


def test_bom_csv_and_json_read_without_the_mark(tmp_path: Path) -> None:
    """A UTF-8 byte-order mark (what spreadsheets write) is not part of the first column's name."""
    table = tmp_path / "pairs.csv"
    table.write_text("origin,similar\nhow do I boil an egg?,how to boil eggs\n", encoding="utf-8-sig")
    assert read_local(str(table), "test") == [{"origin": "how do I boil an egg?", "similar": "how to boil eggs"}]
    array = tmp_path / "pairs.json"
    array.write_text(json.dumps([{"origin": "a", "similar": "b"}]), encoding="utf-8-sig")
    assert read_local(str(array), "test") == [{"origin": "a", "similar": "b"}]
    stream = semantic_gptcache_pairs.build_stream(StreamRequest(seed=0, args={}, data_path=str(table)))
    assert [(first.prompt, second.prompt) for first, second in stream.pairs] == [("how do I boil an egg?",
                                                                                  "how to boil eggs")]


def test_tar_member_past_the_limit_is_refused_by_its_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tar member that declares more than the limit is refused before any of it is decompressed."""
    monkeypatch.setenv("CACHEBENCH_MAX_DATA_BYTES", str(LIMIT))
    _data_files(tmp_path)
    with pytest.raises(UsageError, match=r"tar member pairs\.json\): decompresses to more than"):
        read_local(str(tmp_path / "bomb.tar.gz"), "test")
    with pytest.raises(UsageError, match=r"bomb\.json\.gz: decompresses to more than"):
        read_local(str(tmp_path / "bomb.json.gz"), "test")


def test_only_tasks_declaring_data_read_it() -> None:
    """A task's YAML `data` field is what --data checks; it must match whether the builder reads data_path."""
    for spec in all_tasks().values():
        builder = (REPO / "tasks" / "builders" / f"{spec.builder}.py").read_text()
        assert bool(spec.data) == ("request.data_path" in builder), spec.name


def test_result_columns_of_a_wider_type_still_read(tmp_path: Path) -> None:
    """The column check refuses what cannot mean the same thing, not harmless widening (turn as int64)."""
    table = pq.read_table(write_atomic([_row()], tmp_path / "a.parquet"))
    index = table.schema.get_field_index("turn")
    wide = table.set_column(index, pa.field("turn", pa.int64()), pa.array([0], pa.int64()))
    pq.write_table(wide.replace_schema_metadata(table.schema.metadata), tmp_path / "b.parquet")
    read = read_results([tmp_path / "b.parquet"])
    assert read.schema == SCHEMA and read["turn"].to_pylist() == [0]
    assert read.schema.metadata[METADATA_KEY] == SCHEMA.metadata[METADATA_KEY]
