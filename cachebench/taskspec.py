"""Task definitions read from YAML (tasks/<family>/<task>.yaml), as lm-evaluation-harness keeps tasks as data;
a user's own tasks are YAML files named by path (`--task my/task.yaml`) or found under `--include-path` folders.

A task names its family, the builder that produces its episodes (offline generator or real-dataset loader), the
default mode, the scorer, how many tokens to generate, and the prompt templates. Groups are tags: `--task
multiturn` runs every task tagged with that group.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from cachebench.derived import SEMANTIC_METRIC  # a semantic row's score: 1 unless it served a wrong or stale response
from cachebench.errors import UsageError, unknown_name

MODES = ("multi-turn", "multi-request")
TRACKS = ("kv", "semantic")
MAX_LIMIT = 1_000_000  # --limit: episodes or requests per task; a generated task would build every one up front


@dataclass(frozen=True)
class TaskSpec:
    name: str  # what --task takes: "<family>.<subtask>"
    family: str
    subtask: str
    summary: str
    groups: tuple[str, ...]
    builder: str  # module under tasks/builders
    builder_args: dict[str, Any]
    source: str  # where the data comes from, for listings ("offline: ...", "hub: ...")
    mode: str
    metric: str
    max_new_tokens: int
    context_template: str  # str.format with the episode's fields, must use {context}
    query_template: str  # str.format with the turn's fields, must use {input}
    query_joiner: str = "\n\n"  # joins context and query when both sit in one user message
    chunk_joiner: str = "\n\n"  # joins a chunked episode's documents (tokenized apart from them)
    context_tokens: int = 0  # default target length for generated contexts (0: the data decides)
    episodes: int = 0  # default number of episodes (0: all the data has)
    metric_by_category: dict[str, str] = field(default_factory=dict)  # mixed tasks score per sub-task
    max_new_tokens_by_category: dict[str, int] = field(default_factory=dict)
    track: str = "kv"  # kv: episodes of a context and turns; semantic: a request stream for response caches
    warmup: float = 0.0  # semantic stream: fraction of requests that only fill the cache (left out of scores)
    categories: tuple[str, ...] = ()  # semantic: the categories its data may use
    llm_cost_ms: dict[str, float] = field(default_factory=dict)  # semantic: set LLM cost per category (else measured)
    data: str = ""  # what `--data FILE` takes, for tasks that read a dataset; empty: the task generates its data
    pair_protocol: str = ""  # semantic pair tasks: retrieval or pairwise by default (what the data's source reports)

    def metric_for(self, category: str) -> str:
        return self.metric_by_category.get(category, self.metric)

    def max_new_tokens_for(self, category: str) -> int:
        return self.max_new_tokens_by_category.get(category, self.max_new_tokens)


_REQUIRED = ("family", "subtask", "summary", "builder", "source", "mode", "metric", "max_new_tokens", "template")
_REQUIRED_SEMANTIC = ("family", "subtask", "summary", "builder", "source", "protocol", "categories")


def _identity(data: dict[str, Any]) -> dict[str, Any]:
    """The fields every task has, whichever track: its name, where it comes from and how it is built."""
    return {
        "name": f"{data['family']}.{data['subtask']}",
        "family": data["family"],
        "subtask": data["subtask"],
        "summary": data["summary"],
        "groups": tuple(data.get("groups", ())),
        "builder": data["builder"],
        "builder_args": dict(data.get("args", {}) or {}),
        "source": data["source"],
        "data": str(data.get("data") or ""),
    }


def _parse_semantic(data: dict[str, Any], origin: str) -> TaskSpec:
    """A semantic task: a builder of request streams, its protocol (the task's `mode`) and categories."""
    from cachebench.semantic.stream import PAIR_PROTOCOLS, PROTOCOLS

    missing = [key for key in _REQUIRED_SEMANTIC if key not in data]
    if missing:
        raise ValueError(f"{origin}: missing {', '.join(missing)}")
    if data["protocol"] not in PROTOCOLS:
        raise ValueError(f"{origin}: protocol must be one of {PROTOCOLS}")
    pair_protocol = str(data.get("pair_protocol", "retrieval" if data["protocol"] == "pair" else ""))
    if data["protocol"] == "pair" and pair_protocol not in PAIR_PROTOCOLS:
        raise ValueError(f"{origin}: pair_protocol must be one of {PAIR_PROTOCOLS}")
    if data["protocol"] != "pair" and "pair_protocol" in data:
        raise ValueError(f"{origin}: pair_protocol applies to protocol: pair")
    warmup = float(data.get("warmup", 0.0))
    if not 0.0 <= warmup < 1.0:
        raise ValueError(f"{origin}: warmup must be in [0, 1)")
    return TaskSpec(
        **_identity(data),
        mode=data["protocol"],
        metric=SEMANTIC_METRIC,
        max_new_tokens=int(data.get("max_new_tokens", 64)),  # when the LLM's cost is measured per category
        context_template="",
        query_template="",
        episodes=0,
        track="semantic",
        warmup=warmup,
        categories=tuple(data["categories"]),
        llm_cost_ms={str(k): float(v) for k, v in (data.get("llm_cost_ms") or {}).items()},
        pair_protocol=pair_protocol,
    )


def _parse(text: str, origin: str) -> TaskSpec:
    data = yaml.safe_load(text)
    if data.get("track", "kv") not in TRACKS:
        raise ValueError(f"{origin}: track must be one of {TRACKS}")
    if data.get("track") == "semantic":
        return _parse_semantic(data, origin)
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise ValueError(f"{origin}: missing {', '.join(missing)}")
    if data["mode"] not in MODES:
        raise ValueError(f"{origin}: mode must be one of {MODES}")
    template = data["template"]
    return TaskSpec(
        **_identity(data),
        mode=data["mode"],
        metric=data["metric"],
        max_new_tokens=int(data["max_new_tokens"]),
        context_template=template["context"],
        query_template=template["query"],
        query_joiner=template.get("joiner", "\n\n"),
        chunk_joiner=template.get("chunk_joiner", "\n\n"),
        context_tokens=int(data.get("context_tokens", 0)),
        episodes=int(data.get("episodes", 0)),
        metric_by_category=dict(data.get("metric_by_category", {}) or {}),
        max_new_tokens_by_category={k: int(v) for k, v in (data.get("max_new_tokens_by_category") or {}).items()},
    )


def all_tasks(include: Sequence[str | Path] = ()) -> dict[str, TaskSpec]:
    """Every task YAML shipped in the tasks package, and those under the `include` folders (searched recursively,
    lm-evaluation-harness's --include_path), by name. An included task may not take a built-in's name."""
    specs = _shipped_tasks()
    for folder in include:
        path = Path(folder)
        if not path.is_dir():
            raise UsageError(f"--include-path {folder}: not a folder")
        for file in sorted(path.rglob("*.y*ml")):
            spec = task_file(file)
            if spec.name in specs:
                raise UsageError(f"{file}: task {spec.name!r} is already defined; give it another family or subtask")
            specs[spec.name] = spec
    return specs


def task_file(path: str | Path) -> TaskSpec:
    """The task a YAML file outside the package defines (`--task path/to/task.yaml`), or a one-line error."""
    file = Path(path)
    try:
        return _parse(file.read_text(encoding="utf-8"), str(file))
    except OSError as exc:
        raise UsageError(f"--task {file}: cannot read ({exc.strerror or exc})") from None
    except (ValueError, KeyError, TypeError, AttributeError, yaml.YAMLError) as exc:
        raise UsageError(" ".join(f"{file}: not a task definition ({exc})".split())) from None


def builder_module(spec: TaskSpec) -> ModuleType:
    """The module that builds a task's data: one under tasks/builders, or an importable `package.module` (a task
    defined outside the package may bring its own)."""
    name = spec.builder if "." in spec.builder else f"cachebench.tasks.builders.{spec.builder}"
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise UsageError(f"task {spec.name}: cannot import its builder {spec.builder} ({exc})") from None


def _shipped_tasks() -> dict[str, TaskSpec]:
    """Every task YAML shipped in the tasks package, by name (read once)."""
    specs: dict[str, TaskSpec] = {}
    root = resources.files("cachebench.tasks")
    for family_dir in sorted(root.iterdir(), key=lambda p: p.name):
        if not family_dir.is_dir() or family_dir.name.startswith(("_", ".")) or family_dir.name == "builders":
            continue
        for item in sorted(family_dir.iterdir(), key=lambda p: p.name):
            if item.name.endswith(".yaml"):
                spec = _parse(item.read_text(encoding="utf-8"), f"tasks/{family_dir.name}/{item.name}")
                specs[spec.name] = spec
    return specs


def groups(specs: dict[str, TaskSpec]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for spec in specs.values():
        for group in spec.groups:
            out.setdefault(group, []).append(spec.name)
    return out


def resolve_tasks(name: str, include: Sequence[str | Path] = ()) -> list[TaskSpec]:
    """A task name, a group name or a task YAML file's path -> the task specs to run, in a stable order."""
    if name.endswith((".yaml", ".yml")) and Path(name).is_file():
        return [task_file(name)]
    specs = all_tasks(include)
    if name in specs:
        return [specs[name]]
    by_group = groups(specs)
    if name in by_group:
        return [specs[n] for n in by_group[name]]
    raise unknown_name("task", name, [*specs, *by_group])


def _common_prefix(names: list[str]) -> str:
    """The longest start every name shares (the first and last in sorted order bound all the others)."""
    first, last = min(names), max(names)
    size = next((i for i, (a, b) in enumerate(zip(first, last, strict=False)) if a != b), min(len(first), len(last)))
    return first[:size]


def _data_tasks() -> str:
    """The tasks that read a dataset, for messages: a builder's tasks sharing a name prefix are listed as one
    pattern (`multiturn.scbench_*`), so the list stays one short line."""
    by_builder: dict[str, list[str]] = {}
    for spec in all_tasks().values():
        if spec.data:
            by_builder.setdefault(spec.builder, []).append(spec.name)
    shown = []
    for names in by_builder.values():
        prefix = _common_prefix(names)
        shown.append(f"{prefix}*" if len(names) > 2 and "." in prefix else ", ".join(names))
    return ", ".join(shown)


def check_data_file(data: str) -> None:
    """`--data` must name a readable regular file; a folder or a device is told apart from a missing path."""
    path = Path(data)  # as the builders open it
    if path.is_dir():
        raise UsageError(f"--data {data}: is a directory; --data takes one file")
    if not path.exists():
        raise UsageError(f"--data {data}: no such file")
    if not path.is_file():
        raise UsageError(f"--data {data}: not a regular file")
    if not os.access(path, os.R_OK):
        raise UsageError(f"--data {data}: not readable (permission denied)")


def check_data(data: str | None, specs: list[TaskSpec], task: str) -> None:
    """Refuse a `--data` that would be ignored or misapplied: only tasks whose YAML declares `data` read one, and
    one file is one task's data (a group's tasks each read a different shape). Without `--data`, a task whose
    source is only a file (`source: "file: ..."`) is refused here rather than after a model load."""
    if data is None:
        needs_file = [spec for spec in specs if spec.data and spec.source.startswith("file:")]
        if needs_file:
            spec = needs_file[0]
            raise UsageError(f"task {spec.name} needs --data FILE, {spec.data}; it has no hub source "
                             f"(source: {spec.source.removeprefix('file:').strip()})")
        return
    check_data_file(data)
    generated = [spec.name for spec in specs if not spec.data]
    if generated:
        raise UsageError(f"task {generated[0]} generates its data; --data applies to tasks that read a dataset: "
                         f"{_data_tasks()}")
    if len(specs) > 1:
        names = [spec.name for spec in specs]
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise UsageError(f"--data is one task's data; {task} is a group of {len(names)} tasks (name one: {shown})")
    from cachebench.tasks.builders.hub_records import check_data_size

    check_data_size(data)  # a file (or a .gz's content) past the size limit, refused before any model loads


def check_mode(mode: str | None) -> None:
    if mode is not None and mode not in MODES:
        raise UsageError(f"--mode {mode!r}: expected one of {', '.join(MODES)}")
