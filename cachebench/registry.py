"""Method lookup: names from baselines' registry to classes, imported only when asked for."""

from __future__ import annotations

import importlib

from cachebench.baselines import KV_METHODS
from cachebench.errors import unknown_name
from cachebench.method import KVMethod
from cachebench.params import parse_params


def method_names() -> list[str]:
    return sorted(KV_METHODS)


def method_class(name: str) -> type[KVMethod]:
    if name not in KV_METHODS:
        raise unknown_name("method", name, KV_METHODS)
    module_name, class_name = KV_METHODS[name].split(":")
    module = importlib.import_module(f"cachebench.baselines.{module_name}")
    cls = getattr(module, class_name)
    if cls.name != name:
        raise RuntimeError(f"registry entry {name!r} points at a class named {cls.name!r}")
    return cls


def build_method(name: str, assignments: list[str]) -> KVMethod:
    """Instantiate a method with `--param name=value` settings validated against its declared parameters."""
    cls = method_class(name)
    return cls(parse_params(cls.Params, assignments, owner=name))
