"""A user's own method, task and model settings without editing the package: a plugin package written in a temp
folder (an eviction method as a `score()` alone, and a task YAML), run through the real CLI as `module:Class` and
as an installed entry point, read back by show, leaderboard and gate; and the Python API against the CLI."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from conftest import AUTO_DTYPE, AUTO_DTYPE_NAME, run_cli

from cachebench.errors import UsageError

PRESS = '''
"""Keep the keys with the smallest L2 norm (Devoto et al., 2024), written as a score alone."""
from dataclasses import dataclass

from cachebench import BudgetParams, EvictionMethod, param


@dataclass(frozen=True)
class KNormParams(BudgetParams):
    sinks: int = param(4, "first tokens always kept", low=0)


class KNormPress(EvictionMethod):
    name = "sinknorm"
    summary = "Keys with the smallest L2 norm are kept (Devoto et al., 2024)."
    Params = KNormParams
    uses_queries = False

    def score(self, call, keys, queries):
        return -keys.float().norm(dim=-1)


class Impostor(KNormPress):
    name = "snapkv"
'''

TASK = """
family: mine
subtask: passkey
summary: Two labelled pass keys in filler, a short context.
source: "offline: generated from the seed"
builder: passkey
args:
  needles: 2
mode: multi-turn
metric: first_int
max_new_tokens: 12
context_tokens: 256
episodes: 3
template:
  context: "There is important info hidden inside a lot of irrelevant text. Find it and memorize it.\\n\\n{context}"
  query: "{input}"
"""


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding package `mypkg`, an installed distribution's metadata naming it in the entry-point group,
    and `tasks/mytask.yaml`."""
    root = tmp_path_factory.mktemp("plugin")
    (root / "mypkg").mkdir()
    (root / "mypkg" / "__init__.py").write_text("")
    (root / "mypkg" / "press.py").write_text(textwrap.dedent(PRESS))
    info = root / "mypkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mypkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[cachebench.methods]\nsinknorm = mypkg.press:KNormPress\n")
    (root / "tasks").mkdir()
    (root / "tasks" / "mytask.yaml").write_text(TASK)
    return root


def env_with(root: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(root)}


def rows_of(folder: Path) -> list[dict]:
    return pq.read_table(next(folder.glob("*.parquet"))).to_pylist()


def test_a_plugin_method_and_task_run_and_read_like_built_ins(plugin, tmp_path):
    env = env_with(plugin)
    task = str(plugin / "tasks" / "mytask.yaml")
    ran = run_cli("eval", "--method", "mypkg.press:KNormPress", "--task", task, "--param", "ratio=0.5", "--limit",
                  "2", "--out", str(tmp_path / "a"), "--quiet", env=env)
    assert ran.returncode == 0, ran.stderr
    rows = rows_of(tmp_path / "a")
    assert len(rows) == 4 and {r["method"] for r in rows} == {"sinknorm"} and {r["task"] for r in rows} == {"mine.passkey"}
    assert all(r["error"] is None for r in rows) and json.loads(rows[0]["cell_params"])["ratio"] == 0.5
    per_token = 30 * 2 * 3 * 64 * AUTO_DTYPE.itemsize  # SmolLM2-135M: layers x (K, V) x KV heads x head dim x bytes
    assert all(r["dtype"] == AUTO_DTYPE_NAME and r["kv_bytes"] < 0.75 * r["context_tokens"] * per_token for r in rows)
    again = run_cli("eval", "--method", "sinknorm", "--task", "mine.passkey", "--include-path", str(plugin / "tasks"),
                    "--param", "ratio=0.5", "--limit", "2", "--out", str(tmp_path / "b"), "--quiet", env=env)
    assert again.returncode == 0, again.stderr  # the installed entry point and the included task folder
    assert [(r["prediction"], r["score"]) for r in rows_of(tmp_path / "b")] == [(r["prediction"], r["score"])
                                                                                 for r in rows]
    shown = run_cli("show", str(tmp_path / "a"), env=env)
    assert shown.returncode == 0 and "sinknorm" in shown.stdout and "mine.passkey" in shown.stdout
    board = run_cli("leaderboard", str(tmp_path / "a"), "--out", str(tmp_path / "site"), env=env)
    assert board.returncode == 0 and "sinknorm" in (tmp_path / "site" / "index.html").read_text()
    gate = run_cli("gate", "--baseline", str(tmp_path / "a"), "--candidate", str(tmp_path / "b"), env=env)
    assert gate.returncode == 0, gate.stdout  # the same run again: unchanged, two episodes judged
    assert "| unchanged | mine.passkey | sinknorm |" in gate.stdout


def test_an_installed_plugin_is_listed(plugin):
    listed = run_cli("list", "methods", env={**env_with(plugin), "COLUMNS": "200"})
    assert listed.returncode == 0
    line = next(line for line in listed.stdout.splitlines() if line.startswith("sinknorm"))
    assert "kv" in line and "mypkg.press:KNormPress" in line
    detail = run_cli("list", "methods", "sinknorm", env=env_with(plugin))
    assert detail.returncode == 0 and "sinks: int = 4" in detail.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--method", "nosuch.module:Press"], "cannot import nosuch.module"),
    (["--method", "mypkg.press:Missing"], "mypkg.press has no Missing"),
    (["--method", "os:sep"], "is not a cachebench method class"),
    (["--method", "mypkg.press:Impostor"], "a built-in method"),
    (["--method", "sinknorm", "--param", "sinks=-1"], "sinks"),
    (["--method", "full", "--task", "{root}/mypkg/__init__.py.yaml"], "unknown task"),
    (["--method", "full", "--task", "{root}/bad.yaml"], "not a task definition"),
    (["--method", "full", "--include-path", "{root}/nowhere"], "not a folder"),
    (["--method", "full", "--model-args", "dtype=float16"], "set by --dtype"),
    (["--method", "full", "--model-args", "no-equals"], "expected key=value"),
])
def test_bad_plugin_input_is_one_line(plugin, tmp_path, args, message):
    (plugin / "bad.yaml").write_text("family: mine\nsubtask: [1, 2\n")
    args = [arg.replace("{root}", str(plugin)) for arg in args]
    if "--task" not in args:
        args += ["--task", "multiturn.passkey"]
    result = run_cli("eval", *args, "--out", str(tmp_path), env=env_with(plugin))
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert not list(tmp_path.iterdir())


def test_the_python_api_returns_what_the_cli_writes(plugin, tmp_path, monkeypatch):
    import cachebench
    from cachebench import registry

    monkeypatch.setattr(registry, "_REGISTERED", {})  # what this test registers is forgotten after it
    monkeypatch.syspath_prepend(str(plugin))
    task = str(plugin / "tasks" / "mytask.yaml")
    ran = run_cli("eval", "--method", "full", "--task", task, "--limit", "1", "--out", str(tmp_path / "cli"), "--quiet")
    assert ran.returncode == 0, ran.stderr
    table = cachebench.evaluate(method="full", task=task, limit=1, out=tmp_path / "api")
    frame = table.to_pandas()
    cli = rows_of(tmp_path / "cli")
    assert len(frame) == len(cli) == 2
    assert list(frame["prediction"]) == [r["prediction"] for r in cli]
    assert list(frame["score"]) == [r["score"] for r in cli]
    back = cachebench.read_results([tmp_path / "api", tmp_path / "cli"])
    assert back.num_rows == 4 and set(back["track"].to_pylist()) == {"kv"}
    from mypkg.press import KNormPress

    pressed = cachebench.evaluate(method=KNormPress, task=task, params={"ratio": 0.75}, limit=1, out=tmp_path / "k")
    assert set(pressed["method"].to_pylist()) == {"sinknorm"}
    assert json.loads(pressed["cell_params"][0].as_py())["ratio"] == 0.75
    with pytest.raises(UsageError, match="unknown option"):
        cachebench.evaluate(method="full", task=task, limits=2)


def test_a_score_alone_keeps_window_sinks_then_the_best():
    from cachebench.kvcompress.evictor import protect
    from cachebench.kvcompress.prune import top_k_sorted

    scores = torch.tensor([[[5.0, 1.0, 9.0, 2.0, 3.0, 0.0, 7.0, 4.0]]])
    assert top_k_sorted(protect(scores, sinks=2, window=2), 5).tolist() == [[[0, 1, 2, 6, 7]]]
    assert top_k_sorted(protect(scores, sinks=2, window=2), 1).tolist() == [[[7]]]  # the newest first
    assert top_k_sorted(protect(scores, sinks=0, window=0), 2).tolist() == [[[2, 6]]]
    with_nan = torch.tensor([[[float("nan"), 1.0, 2.0]]])
    assert top_k_sorted(protect(with_nan, 0, 0), 2).tolist() == [[[1, 2]]]


def test_model_args_reach_from_pretrained_and_name_the_model():
    from cachebench.models.loading import load_model, parse_model_args

    assert parse_model_args(["revision=main,low_cpu_mem_usage=true", "trust_remote_code=false"]) == {
        "revision": "main", "low_cpu_mem_usage": True, "trust_remote_code": False}
    model = load_model("embedded", "float32", "cpu", "sdpa", ["low_cpu_mem_usage=true"])
    assert model.name == "SmolLM2-135M-Instruct (low_cpu_mem_usage=True)"
