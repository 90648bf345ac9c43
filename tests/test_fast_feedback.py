"""Fast feedback from the real command line: a typo in a method, task or parameter is refused in one line before
torch loads; `list methods` fits a terminal; listings and every `--help` keep names whole at 80 columns; and the
method manifest those checks read is what the real method classes generate now."""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import subprocess
import sys
import time
import typing
from typing import Any

import pytest
import typer.main
from conftest import CLI, REPO, run_cli

from cachebench import cli, method_manifest
from cachebench.errors import UsageError
from cachebench.method_manifest import METHODS, params_class, parse_type, type_text
from cachebench.params import parse_params
from cachebench.registry import infrastructure_params, method_class, method_names
from cachebench.taskspec import all_tasks

NARROW = {"COLUMNS": "80"}
HEAVY = ("torch", "transformers")

TYPOS = [
    (["--method", "snapkvv", "--task", "multiturn"], "unknown method 'snapkvv'; did you mean 'snapkv' or 'adakv'?"),
    (["--method", "snapkv", "--task", "multiturnn"], "unknown task 'multiturnn'; did you mean 'multiturn'"),
    (["--method", "snapkv", "--task", "multiturn", "--param", "kernal=3"], "did you mean 'kernel'?"),
    (["--method", "snapkv", "--task", "multiturn", "--param", "ratio=1.5"], "--param ratio=1.5: must be <= 0.99"),
    (["--method", "snapkv", "--task", "multiturn", "--param", "ratio=0.5", "--param", "budget=64"],
     "give ratio or budget, not both"),
    (["--method", "threshold", "--task", "semantic.stream", "--param", "store=mongo"],
     "--param store=mongo: must be one of sqlite, memory, redis, chroma"),
]


def imported_modules(importtime_stderr: str) -> set[str]:
    """Module names from `python -X importtime` output (stderr lines `import time: self | cumulative | name`)."""
    names = set()
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    return names


def heavy(modules: set[str]) -> set[str]:
    return {m for m in modules if m.split(".")[0] in HEAVY}


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("import time:")]


@pytest.mark.parametrize(("args", "message"), TYPOS, ids=[m[:32] for _, m in TYPOS])
def test_typo_is_refused_in_one_line_fast_and_without_torch(tmp_path, args, message):
    started = time.monotonic()
    result = run_cli("eval", *args, "--out", str(tmp_path), env=NARROW)
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert elapsed < 3.0, f"a typo took {elapsed:.1f} s to refuse"
    assert not list(tmp_path.iterdir())

    traced = subprocess.run([sys.executable, "-X", "importtime", "-m", "cachebench.cli", "eval", *args],
                            capture_output=True, text=True, cwd=REPO, timeout=60)
    assert traced.returncode == 2
    assert len(error_lines(traced.stderr)) == 1 and message in traced.stderr
    modules = imported_modules(traced.stderr)
    assert "cachebench.method_manifest" in modules, "the trace did not record the run"
    assert not heavy(modules), sorted(heavy(modules))[:5]


def test_validation_and_infrastructure_lookup_do_not_import_torch():
    snippet = (
        "import sys\n"
        "from cachebench.errors import UsageError\n"
        "from cachebench.method_manifest import check_params\n"
        "from cachebench.registry import infrastructure_params\n"
        "check_params('snapkv', ['ratio=0.3', 'pooling=max'])\n"
        "try:\n"
        "    check_params('snapkv', ['pooling=min'])\n"
        "    raise SystemExit('pooling=min was accepted')\n"
        "except UsageError:\n"
        "    pass\n"
        "assert infrastructure_params('prefix') == {'device_mb', 'cpu_mb', 'disk_mb', 'disk_dir'}\n"
        "assert infrastructure_params('threshold') >= {'store', 'redis_url'}\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')]\n"
        "assert not loaded, loaded[:5]\n"
    )
    result = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr


def test_list_methods_is_one_line_per_method_within_80_columns():
    result = run_cli("list", "methods", env=NARROW)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    names = method_names()
    assert len(lines) < len(names) + 5, len(lines)
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    starts = {line.split()[0] for line in lines if line.strip()}
    assert set(names) <= starts
    for name in names:
        line = next(line for line in lines if line.split()[0] == name)
        assert line.split()[1] == METHODS[name].track


def test_list_methods_name_shows_typed_parameters_and_infrastructure():
    snapkv = run_cli("list", "methods", "snapkv", env=NARROW)
    assert snapkv.returncode == 0, snapkv.stderr
    for fragment in ("ratio: float | None = None  (>= 0.0, <= 0.99)", "budget: int | None = None  (>= 1, <= 16777216)",
                     "window: int = 32  (>= 1)", "pooling: str = 'avg'  (one of avg, max)",
                     "fraction of the cache removed"):
        assert fragment in snapkv.stdout, fragment
    assert "infrastructure" not in snapkv.stdout
    assert all(len(line) <= 80 for line in snapkv.stdout.splitlines())
    prefix = run_cli("list", "methods", "prefix", env=NARROW)
    assert "block_tokens: int = 64  (>= 1)" in prefix.stdout
    assert "device_mb: int = 2048  (>= 0; infrastructure)" in prefix.stdout
    full = run_cli("list", "methods", "full", env=NARROW)
    assert full.returncode == 0 and "parameters: none" in full.stdout


def test_list_methods_unknown_name_is_one_line_without_torch():
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "cachebench.cli", "list", "methods",
                             "snapkvv"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 2
    assert error_lines(result.stderr) == ["error: unknown method 'snapkvv'; did you mean 'snapkv' or 'adakv'?"]
    assert not heavy(imported_modules(result.stderr))
    listed = subprocess.run([sys.executable, "-X", "importtime", "-m", "cachebench.cli", "list", "methods",
                             "cacheblend"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert listed.returncode == 0 and "recompute_ratio" in listed.stdout
    assert not heavy(imported_modules(listed.stderr))


def test_list_tasks_keeps_every_task_name_whole_at_80_columns():
    result = run_cli("list", "tasks", env=NARROW)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    headers = {line.split("  [", 1)[0] for line in lines if "  [" in line and not line.startswith(" ")}
    assert set(all_tasks()) <= headers, sorted(set(all_tasks()) - headers)
    assert any(line.startswith("group scbench: multiturn.scbench_choice_eng") for line in lines)


def _commands(command: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every command and group under `command` (typer's vendored click, so duck-typed), with the words that
    reach it."""
    found = [(path, command)]
    for name, sub in (getattr(command, "commands", None) or {}).items():
        found += _commands(sub, (*path, name))
    return found


def test_every_help_keeps_option_names_whole_at_80_columns():
    commands = _commands(typer.main.get_command(cli.app))
    assert any(path == ("eval",) for path, _ in commands)
    for path, command in commands:
        result = subprocess.run([*CLI, *path, "--help"], capture_output=True, text=True, cwd=REPO, timeout=60,
                                env={**os.environ, **NARROW})
        assert result.returncode == 0, (path, result.stderr)
        lines = result.stdout.splitlines()
        assert all(len(line) <= 80 for line in lines), (path, max(lines, key=len))
        words = [o for p in command.params for o in (*p.opts, *p.secondary_opts) if o.startswith("-")]
        words += list(getattr(command, "commands", None) or {})
        for word in words:
            assert re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", result.stdout), (path, word)


def test_the_committed_manifest_is_what_the_method_classes_generate():
    committed = method_manifest.MANIFEST.read_text(encoding="utf-8")
    generated = method_manifest.generate()
    if committed != generated:
        diff = difflib.unified_diff(committed.splitlines(), generated.splitlines(), "committed", "generated",
                                    lineterm="", n=0)
        pytest.fail(f"cachebench/method_manifest.json differs from the method classes in baselines/: run "
                    f"`{method_manifest.REGENERATE}` and commit the file\n" + "\n".join(list(diff)[:40]))


def test_manifest_types_read_back_as_the_annotations():
    for tp in (int, float, str, bool, int | None, float | None, typing.Literal["hnsw", "faiss"],
               typing.Literal["a | b", "c"] | None, typing.Literal[1, 2], typing.Literal[True]):
        back = parse_type(type_text(tp))
        assert back == tp and type(back) is type(tp), (tp, type_text(tp), back)
    with pytest.raises(ValueError, match="unsupported parameter type"):
        type_text(list[int])
    with pytest.raises(ValueError, match="cannot read"):
        parse_type("int | list")


def test_manifest_matches_the_real_method_classes():
    assert sorted(METHODS) == method_names()
    for name in method_names():
        cls, spec = method_class(name), METHODS[name]
        assert (spec.track, spec.summary) == (cls.track, cls.summary), name
        assert spec.path == f"{cls.__module__}:{cls.__qualname__}", name
        fields = dataclasses.fields(cls.Params)
        hints = typing.get_type_hints(cls.Params)
        assert [f.name for f in fields] == [p.name for p in spec.params], name
        for field, declared in zip(fields, spec.params, strict=True):
            meta = field.metadata
            real = (hints[field.name], field.default, meta.get("help"), meta.get("low"), meta.get("high"),
                    meta.get("choices"), bool(meta.get("infrastructure")))
            listed = (declared.type, declared.default, declared.help, declared.low, declared.high,
                      declared.choices, declared.infrastructure)
            assert real == listed, (name, field.name)
            assert [type(v) for v in real] == [type(v) for v in listed], (name, field.name)  # 0 is not 0.0
        assert hasattr(cls.Params, "__post_init__") == bool(spec.exclusive), name
        assert infrastructure_params(name) == {p.name for p in spec.params if p.infrastructure}


def _probes(spec: typing.Any) -> list[list[str]]:
    """Settings at and past each bound, outside the choices, of the wrong type, and of each exclusive pair."""
    probes: list[list[str]] = [[]]
    for p in spec.params:
        for bound, step in ((p.low, -1), (p.high, 1)):
            if bound is not None:
                probes += [[f"{p.name}={bound}"], [f"{p.name}={bound + step * 0.5}"]]
        if p.choices:
            probes += [[f"{p.name}={p.choices[-1]}"], [f"{p.name}=not-a-choice"]]
        probes.append([f"{p.name}=abc"])
    for first, second in spec.exclusive:
        probes.append([f"{first}=0.5", f"{second}=8"])
    return probes


def _outcome(cls: type, name: str, assignments: list[str]) -> str:
    try:
        parse_params(cls, assignments, owner=name)
    except UsageError as error:
        return str(error)
    return "accepted"


def test_manifest_validation_agrees_with_the_real_classes():
    for name in method_names():
        spec, real = METHODS[name], method_class(name).Params
        for assignments in _probes(spec):
            expected = _outcome(real, name, assignments)
            assert _outcome(params_class(name), name, assignments) == expected, (name, assignments)


def test_effective_defaults_are_what_a_method_runs_with():
    """`show` hides parameters equal to these: they must be what an unconfigured method records in its rows."""
    import json

    from cachebench.method_manifest import METHODS, effective_defaults
    from cachebench.params import canonical_json
    from cachebench.registry import build_method
    from cachebench.semantic.report import short_params

    for name in METHODS:
        recorded = canonical_json(build_method(name, []).params)
        assert json.loads(recorded) == json.loads(json.dumps(effective_defaults(name))), name
        assert short_params(name, recorded) == "defaults", name
    assert short_params("snapkv", '{"budget":null,"kernel":7,"pooling":"avg","ratio":0.75,"window":32}') == "ratio=0.75"
