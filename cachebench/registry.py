"""Method lookup: names from baselines' registry to classes, imported only when asked for.

Two tracks share one namespace of method names: KV-cache methods (cachebench.method.KVMethod) and semantic
response caches (cachebench.semantic.method.SemanticMethod); a class's `track` says which.
"""

from __future__ import annotations

import importlib
from typing import Any

from cachebench import method_manifest
from cachebench.baselines import KV_METHODS, SEMANTIC_METHODS
from cachebench.errors import unknown_name
from cachebench.params import parse_params

_ALL = {**KV_METHODS, **SEMANTIC_METHODS}


def method_names() -> list[str]:
    return sorted(_ALL)


def method_track(name: str) -> str:
    """"kv" or "semantic", without importing the method."""
    if name not in _ALL:
        raise unknown_name("method", name, _ALL)
    return "semantic" if name in SEMANTIC_METHODS else "kv"


def method_class(name: str) -> type[Any]:
    if name not in _ALL:
        raise unknown_name("method", name, _ALL)
    module_name, class_name = _ALL[name].split(":")
    module = importlib.import_module(f"cachebench.baselines.{module_name}")
    cls = getattr(module, class_name)
    if cls.name != name:
        raise RuntimeError(f"registry entry {name!r} points at a class named {cls.name!r}")
    return cls


def build_method(name: str, assignments: list[str]) -> Any:
    """Instantiate a method with `--param name=value` settings validated against its declared parameters."""
    cls = method_class(name)
    return cls(parse_params(cls.Params, assignments, owner=name))


def infrastructure_params(name: str) -> frozenset[str]:
    """The parameters of method `name` that say where or how big its storage is, not what it computes
    (cachebench.params.param's `infrastructure`); empty for a name this version does not know. Read from the
    manifest: result rows are written and read without importing the method classes and torch behind them."""
    if name not in _ALL:
        return frozenset()
    return method_manifest.infrastructure_params(name)
