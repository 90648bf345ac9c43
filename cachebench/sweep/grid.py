"""Sweep files: a grid of (method, parameters, task, model, settings) cells written with product syntax, kept as
data. A suite (the CI grid) is a sweep file with a name; there is one mechanism.

    name: eviction
    model: embedded          # top-level values are every block's defaults
    dtype: float32
    limit: 10
    grid:
      - methods: {full: {}, snapkv: {ratio: [0.25, 0.5]}}   # a list of values is an axis of the product
        tasks: [multiturn]
        modes: [multi-turn, multi-request]
        compression: [query-agnostic, query-aware]
      - {method: threshold, task: semantic.stream, params: {threshold: 0.8}, llm_cost: 800}

Every key takes one value or a list; `methods` also takes a mapping of method name to parameters, each parameter
one value or a list. A cell's identity (`Cell.key`) is a hash of what it runs, so the same cell keeps its files
however the grid around it is edited, and a rerun into the same folder finds what is already done.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from cachebench.errors import UsageError, unknown_name
from cachebench.runs import EvalRequest

# cell options: the sweep key, the EvalRequest field it sets, and the Python types it accepts
OPTIONS: dict[str, tuple[str, tuple[type, ...]]] = {
    "model": ("model", (str,)),
    "dtype": ("dtype", (str,)),
    "device": ("device", (str,)),
    "attn_impl": ("attn_impl", (str,)),
    "seed": ("seed", (int,)),
    "mode": ("mode", (str,)),
    "golden_history": ("golden_history", (bool,)),
    "compression": ("compression", (str,)),
    "context_tokens": ("context_tokens", (int,)),
    "limit": ("limit", (int,)),
    "max_new_tokens": ("max_new_tokens", (int,)),
    "truncate": ("truncate", (str,)),
    "data": ("data", (str,)),
    "llm_cost": ("llm_cost", (str,)),
    "pair_protocol": ("pair_protocol", (str,)),
    "requests": ("requests", (int,)),
    "embedding": ("embedding", (str,)),
    "embed_batch": ("embed_batch", (int,)),
}
PLURALS = {"models": "model", "seeds": "seed", "modes": "mode", "tasks": "task", "methods": "method"}
_BLOCK_KEYS = {"method", "task", "params", "shards", *OPTIONS, *PLURALS}
_SWEEP_KEYS = {"name", "summary", "grid", "entries", *_BLOCK_KEYS}  # any block key at the top: every block's default
DEFAULTS = {"device": "auto"}  # what a sweep runs with where its file says nothing (as `cachebench eval`)


@dataclass(frozen=True)
class Cell:
    """One (method, parameters, task, settings) of a sweep: one `cachebench eval` run, split into `shards`."""

    method: str
    task: str
    params: tuple[tuple[str, Any], ...] = ()  # as written: (("ratio", 0.5),)
    options: tuple[tuple[str, Any], ...] = ()  # the OPTIONS set, sorted by name
    shards: int = 1

    @property
    def key(self) -> str:
        """12 hex digits identifying what the cell runs (not how many shards it is split into)."""
        what = {"method": self.method, "task": self.task, "params": dict(self.params), **dict(self.options)}
        return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:12]

    @property
    def stem(self) -> str:
        """The cell's file-name stem: readable, and unique through the key."""
        task = Path(self.task).stem if self.task.endswith((".yaml", ".yml")) else self.task  # a task file: its name
        readable = re.sub(r"[^A-Za-z0-9._=-]+", "_", f"{self.method}-{task}")[:80].strip("._-")
        return f"{readable or 'cell'}-{self.key}"

    def run_id(self, shard: int) -> str:
        """The stable run id of one shard (the shard's file is cells/<run_id>.parquet)."""
        return self.stem if self.shards == 1 else f"{self.stem}.s{shard}-{self.shards}"

    def assignments(self) -> tuple[str, ...]:
        """The params as `--param name=value` strings, so they go through the CLI's typed parsing."""
        return tuple(f"{name}={_param_text(value)}" for name, value in self.params)

    def option(self, name: str) -> Any:
        return dict(self.options).get(name)

    def label(self) -> str:
        params = " ".join(self.assignments())
        settings = " ".join(f"{k}={v}" for k, v in self.options if k not in ("model", "dtype", "device"))
        return " ".join(part for part in (self.method, params, "on", self.task, settings) if part)

    def request(self, out: Path, shard: int) -> EvalRequest:
        """The eval request of shard `shard` of this cell, writing cells/<run_id>.parquet under `out`."""
        fields = {OPTIONS[name][0]: value for name, value in self.options}
        return EvalRequest(method=self.method, task=self.task, params=self.assignments(), out=out,
                           shard=(shard, self.shards) if self.shards > 1 else None, run_id=self.run_id(shard),
                           **fields)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key, "method": self.method, "task": self.task}
        if self.params:
            out["params"] = dict(self.params)
        out.update(dict(self.options))
        out["shards"] = self.shards
        return out


@dataclass(frozen=True)
class Sweep:
    name: str
    summary: str
    origin: str  # where it was read from, for messages and the manifest
    text: str  # the file as written, kept in the manifest so `sweep status` needs nothing else
    cells: tuple[Cell, ...] = field(default_factory=tuple)
    merged: int = 0  # cells written twice in the grid, run once


def _param_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _axis(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _check_value(name: str, value: Any, where: str) -> Any:
    _, types = OPTIONS[name]
    if name == "llm_cost":
        value = _llm_cost_text(value, where)
    if value is None:
        return None
    if (bool not in types and isinstance(value, bool)) or not isinstance(value, types):
        wanted = " or ".join(t.__name__ for t in types)
        raise UsageError(f"{where}: {name} must be {'an ' if wanted == 'int' else 'a '}{wanted}, got {value!r}")
    return value


def _llm_cost_text(value: Any, where: str) -> str | None:
    """YAML gives 800, "800", or {code: 900, factual: 400}; the run takes the --llm-cost-ms string."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, dict):
        return ",".join(f"{name}={cost}" for name, cost in value.items())
    raise UsageError(f"{where}: llm_cost must be milliseconds or a mapping of category: ms, got {value!r}")


def _singular(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """The block with plural keys (`methods`, `tasks`, ...) renamed to their singular; both at once is an error."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = PLURALS.get(key, key)
        if name in out:
            raise UsageError(f"{where}: both {name!r} and {name + 's'!r} given; use one")
        out[name] = value
    return out


def _methods(block: dict[str, Any], where: str) -> list[tuple[str, list[tuple[tuple[str, Any], ...]]]]:
    """[(method, [params combination, ...])] from `method` (+ `params`) or a `methods` list or mapping."""
    given = block.get("method")
    if given is None:
        raise UsageError(f"{where}: no method (give `method` or `methods`)")
    if isinstance(given, str):
        given = {given: block.get("params") or {}}
    elif "params" in block:
        raise UsageError(f"{where}: `params` goes with one `method`; with several, give each its own "
                         "(methods: {snapkv: {ratio: [0.25, 0.5]}})")
    if isinstance(given, list):
        merged: dict[str, Any] = {}
        for item in given:
            if isinstance(item, str):
                merged[item] = {}
            elif isinstance(item, dict) and len(item) == 1:
                merged.update(item)
            else:
                raise UsageError(f"{where}: a methods list holds names or one-key mappings, got {item!r}")
        given = merged
    if not isinstance(given, dict) or not given:
        raise UsageError(f"{where}: methods must be a name, a list or a mapping of name to params, got {given!r}")
    out = []
    for method, params in given.items():
        if not isinstance(method, str) or not method:
            raise UsageError(f"{where}: a method must be a name, got {method!r}")
        params = params or {}
        if not isinstance(params, dict):
            raise UsageError(f"{where}: params of {method!r} must map names to values, got {params!r}")
        names = [str(name) for name in params]
        axes = []
        for name, value in params.items():
            values = _axis(value)
            if not values or any(isinstance(v, dict | list) or v is None for v in values):
                raise UsageError(f"{where}: param {name!r} of {method!r} must be a value or a list of values, got "
                                 f"{value!r}")
            axes.append(values)
        out.append((method, [tuple(zip(names, combo, strict=True)) for combo in itertools.product(*axes)]))
    return out


def _block_cells(raw: Any, defaults: dict[str, Any], where: str) -> list[Cell]:
    if not isinstance(raw, dict):
        raise UsageError(f"{where}: expected a mapping with method(s) and task(s), got {raw!r}")
    unknown = sorted(set(raw) - _BLOCK_KEYS)
    if unknown:
        raise UsageError(f"{where}: unknown key {unknown[0]!r}; a grid block takes {', '.join(sorted(_BLOCK_KEYS))}")
    block = {**defaults, **_singular(raw, where)}
    tasks = _axis(block.get("task"))
    if not tasks or any(not isinstance(task, str) or not task for task in tasks):
        raise UsageError(f"{where}: task(s) must be names, got {block.get('task')!r}")
    shards = block.get("shards", 1)
    if isinstance(shards, bool) or not isinstance(shards, int) or not 1 <= shards <= 10_000:
        raise UsageError(f"{where}: shards must be an integer from 1 to 10000, got {shards!r}")
    option_axes = []
    for name in OPTIONS:
        if name in block:
            values = [_check_value(name, value, where) for value in _axis(block[name])]
            if not values:
                raise UsageError(f"{where}: {name} is an empty list")
            option_axes.append([(name, value) for value in values if value is not None])
    cells = []
    for task in tasks:
        for method, combos in _methods(block, where):
            for params in combos:
                for chosen in itertools.product(*[axis or [None] for axis in option_axes]):
                    options = tuple(sorted(item for item in chosen if item is not None))
                    cells.append(Cell(method, task, params, options, shards))
    return cells


def parse_sweep(text: str, origin: str, default_name: str) -> Sweep:
    """A sweep from YAML text; any shape error is a one-line UsageError naming `origin` and the block."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"{origin}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{origin}: expected a mapping with a `grid` list")
    unknown = sorted(set(data) - _SWEEP_KEYS)
    if unknown:
        raise UsageError(f"{origin}: unknown key {unknown[0]!r}; a sweep file takes {', '.join(sorted(_SWEEP_KEYS))}")
    if "grid" in data and "entries" in data:
        raise UsageError(f"{origin}: give `grid` or `entries` (the same thing), not both")
    blocks = data.get("grid", data.get("entries"))
    if not isinstance(blocks, list) or not blocks:
        raise UsageError(f"{origin}: `grid` must be a non-empty list of blocks")
    for key in ("name", "summary"):
        if key in data and not isinstance(data[key], str):
            raise UsageError(f"{origin}: {key} must be a string, got {data[key]!r}")
    defaults = {**DEFAULTS, **_singular({k: v for k, v in data.items() if k in _BLOCK_KEYS}, origin)}
    cells: list[Cell] = []
    seen: set[str] = set()
    merged = 0
    for index, raw in enumerate(blocks):
        for cell in _block_cells(raw, defaults, f"{origin} block {index}"):
            if cell.key in seen:
                merged += 1
                continue
            seen.add(cell.key)
            cells.append(cell)
    return Sweep(name=data.get("name", default_name), summary=data.get("summary", ""), origin=origin, text=text,
                 cells=tuple(cells), merged=merged)


def _shipped() -> dict[str, Any]:
    root = resources.files("cachebench.suites")
    return {item.name.removesuffix(".yaml"): item for item in root.iterdir() if item.name.endswith(".yaml")}


def shipped_names() -> list[str]:
    return sorted(_shipped())


def load_sweep(name: str | None = None, file: Path | None = None) -> Sweep:
    """A shipped sweep (suite) by name, or a sweep file; exactly one of the two."""
    if (name is None) == (file is None):
        raise UsageError("give a suite name or a sweep file (one of the two)")
    if file is not None:
        if not file.is_file():
            raise UsageError(f"{file}: no such sweep file")
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"{file}: cannot read it ({exc})") from None
        return parse_sweep(text, str(file), file.stem)
    shipped = _shipped()
    if name not in shipped:
        raise unknown_name("suite", str(name), shipped)
    return parse_sweep(shipped[name].read_text(encoding="utf-8"), f"suites/{name}.yaml", str(name))
