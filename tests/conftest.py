"""Shared fixtures: the real embedded model loaded once per test session, a small eviction method used only
to prove that the runner serves methods that shrink the cache (it is not registered), and the registry queries
the generic tests take their methods from (`methods_where`), so a new method is tested without being listed."""

from __future__ import annotations

import os

# The suite runs on two pytest-xdist workers (pyproject addopts); each keeps torch to one thread, and so do the
# CLI subprocesses it starts, because two processes of two threads each on two cores slow torch down tenfold.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import dataclasses
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from cachebench.engine.chat import ChatFormat
from cachebench.engine.runner import EpisodeRunner, RunSettings, prepare_episodes
from cachebench.engine.session import LayerCall
from cachebench.eval_run import EvalRequest, build_episodes
from cachebench.method import KVMethod
from cachebench.metrics import get_scorer
from cachebench.models.loaded import LoadedModel
from cachebench.models.loading import load_model, resolve_dtype
from cachebench.params import param
from cachebench.registry import method_class, method_names, method_track
from cachebench.taskspec import resolve_tasks

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # in case torch was imported before this file
_SCRIPT = Path(sys.executable).parent / "cachebench"
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "cachebench.cli"]


# What `--dtype auto` loads on this CPU (bf16 only with AVX-512), so byte counts and dtype columns are checked on
# any machine.
AUTO_DTYPE = resolve_dtype("auto", torch.device("cpu"))
AUTO_DTYPE_NAME = str(AUTO_DTYPE).removeprefix("torch.")


def methods_where(track: str, predicate: Callable[[type], bool] = lambda cls: True) -> list[str]:
    """The registered methods of `track` ("kv" or "semantic") whose class satisfies `predicate`, by name: built-ins
    (a new file in baselines/ included), installed entry points, and classes given to
    cachebench.registry.register_method before the tests are collected (a pytest plugin, `-p module`, can)."""
    return [name for name in method_names() if method_track(name) == track and predicate(method_class(name))]


def declares(cls: type, parameter: str) -> bool:
    """Whether method class `cls` takes `parameter`."""
    return parameter in {field.name for field in dataclasses.fields(cls.Params)}


def declared(name: str, settings: dict[str, object]) -> list[str]:
    """`key=value` for those of `settings` that method `name` declares as parameters: a generic test shrinks sizes
    (blocks, chunks) and loosens thresholds without knowing which method takes which."""
    return [f"{key}={value}" for key, value in settings.items() if declares(method_class(name), key)]


@pytest.fixture(scope="session")
def embedded() -> LoadedModel:
    """SmolLM2-135M-Instruct in bf16 on CPU, as `cachebench eval` loads it by default."""
    torch.manual_seed(0)
    return load_model("embedded", dtype="auto", device="cpu")


@dataclass(frozen=True)
class WindowParams:
    sinks: int = param(4, "first tokens always kept")
    window: int = param(32, "most recent tokens kept", low=1)


class RecentWindow(KVMethod):
    """Test-only: keeps the first `sinks` and the last `window` entries of every layer after each forward."""

    name = "test-window"
    summary = "test-only eviction"
    Params = WindowParams
    uses_layer_hook = True

    def __init__(self, params: WindowParams) -> None:
        super().__init__(params)
        self.calls: list[tuple[int, str, int]] = []  # (layer, phase, first true position of the new tokens)

    def on_layer(self, call: LayerCall) -> None:
        self.calls.append((call.layer_idx, call.phase, int(call.positions[0])))
        layer = call.cache.layers[call.layer_idx]
        keep = self.params.sinks + self.params.window
        if layer.keys.shape[-2] > keep:
            index = torch.cat([torch.arange(self.params.sinks), torch.arange(layer.keys.shape[-2] - self.params.window,
                                                                             layer.keys.shape[-2])])
            layer.keys = layer.keys[:, :, index]
            layer.values = layer.values[:, :, index]


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the real `cachebench` command line in a subprocess, as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO, env=full_env)


def assert_usage_error(result: subprocess.CompletedProcess, message: str, out: Path) -> None:
    """Bad input: exit code 2, one line on stderr that says `message`, no traceback, nothing written to `out`."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]
    assert not list(out.glob("*.parquet"))


def run_task(model, method, task="multiturn.passkey", mode=None, episodes=2, context_tokens=None, golden=False,
             seed=0, compression="query-agnostic", max_new_tokens=None):
    """Run `method` on a few episodes of a task in-process on `model`; returns prepared episodes, measures, scores."""
    spec = resolve_tasks(task)[0]
    request = EvalRequest(method=method.name, task=task, limit=episodes, context_tokens=context_tokens, seed=seed)
    settings = RunSettings(mode=mode or spec.mode, golden_history=golden, compression=compression,
                           max_new_tokens=max_new_tokens)
    prepared = prepare_episodes(build_episodes(spec, request, model), spec, model, ChatFormat(model.tokenizer),
                                settings)
    runner = EpisodeRunner(model, method, spec, settings)
    try:
        measures = [m for p in prepared for m in runner.run(p)]
    finally:
        runner.close()
    turns = [t for p in prepared for t in p.episode.turns]
    scores = [get_scorer(spec.metric)(m.prediction, t.references, t.meta) for m, t in zip(measures, turns, strict=True)]
    return prepared, measures, scores
