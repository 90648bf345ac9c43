"""Method lookup: names to classes, imported only when asked for.

Two tracks share one namespace of method names: KV-cache methods (cachebench.method.KVMethod) and semantic
response caches (cachebench.semantic.method.SemanticMethod); a class's `track` says which. Methods come from
three places, and a run's rows record the class's own `name` whichever it was:

- the built-ins, listed in baselines' registry (and described, torch-free, in cachebench.method_manifest);
- plugins: `--method package.module:Class` names any importable method class, and installed packages declare
  theirs in the `cachebench.methods` entry-point group (`name = "package.module:Class"`);
- classes registered at run time with `register_method` (the Python API).
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

from cachebench import method_manifest
from cachebench.baselines import KV_METHODS, SEMANTIC_METHODS
from cachebench.errors import UsageError, unknown_name
from cachebench.params import infrastructure_fields, parse_params

ENTRY_POINT_GROUP = "cachebench.methods"
_ALL = {**KV_METHODS, **SEMANTIC_METHODS}
_REGISTERED: dict[str, type[Any]] = {}  # plugin classes by their name, once loaded or registered


def method_names() -> list[str]:
    """Built-in, registered and installed (entry-point) method names."""
    return sorted({*_ALL, *_REGISTERED, *installed_methods()})


def method_track(name: str) -> str:
    """"kv" or "semantic"; a built-in's without importing it."""
    if name in _ALL:
        return "semantic" if name in SEMANTIC_METHODS else "kv"
    return method_class(name).track


def method_class(name: str) -> type[Any]:
    """The class of a built-in name, an installed or registered plugin's name, or a `module:Class` path."""
    if name in _ALL:
        module_name, class_name = _ALL[name].split(":")
        cls = getattr(importlib.import_module(f"cachebench.baselines.{module_name}"), class_name)
        if cls.name != name:
            raise RuntimeError(f"registry entry {name!r} points at a class named {cls.name!r}")
        return cls
    if name in _REGISTERED:
        return _REGISTERED[name]
    if ":" in name:
        return register_method(_import(name, name))
    installed = installed_methods()
    if name in installed:
        cls = _import(installed[name], f"entry point {name!r}")
        if cls.name != name:
            raise UsageError(f"entry point {name!r} of group {ENTRY_POINT_GROUP} loads a method named {cls.name!r}")
        return register_method(cls)
    raise unknown_name("method", name, method_names())


def build_method(name: str, assignments: list[str]) -> Any:
    """Instantiate a method with `--param name=value` settings validated against its declared parameters."""
    cls = method_class(name)
    return cls(parse_params(cls.Params, assignments, owner=cls.name))


def register_method(cls: type[Any]) -> type[Any]:
    """Make a method class (a KVMethod or SemanticMethod subclass with a `name`, `summary` and `Params`) known by
    its name for this process: `cachebench.evaluate(method=cls.name, ...)`, suites and `build_method` find it.
    Returns the class, so it also works as a decorator. A built-in's name cannot be taken."""
    from cachebench.method import KVMethod
    from cachebench.semantic.method import SemanticMethod

    if not (isinstance(cls, type) and issubclass(cls, KVMethod | SemanticMethod)):
        raise UsageError(f"{cls!r} is not a cachebench method class (a KVMethod or SemanticMethod subclass)")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name or ":" in name or any(c.isspace() for c in name):
        raise UsageError(f"method class {cls.__qualname__} needs a `name`: a non-empty word without ':' or spaces")
    if name in _ALL:
        raise UsageError(f"method class {cls.__qualname__} is named {name!r}, a built-in method; choose another name")
    if not isinstance(getattr(cls, "summary", None), str):
        raise UsageError(f"method class {cls.__qualname__} needs a one-line `summary`")
    known = _REGISTERED.get(name)
    if known is not None and known is not cls:
        raise UsageError(f"two method classes are named {name!r}: {_path(known)} and {_path(cls)}")
    _REGISTERED[name] = cls
    return cls


def infrastructure_params(name: str) -> frozenset[str]:
    """The parameters of method `name` that say where or how big its storage is, not what it computes
    (cachebench.params.param's `infrastructure`); empty for a name this process does not know. Built-ins are read
    from the manifest: result rows are written and read without importing the method classes and torch."""
    if name in _ALL:
        return method_manifest.infrastructure_params(name)
    if name in _REGISTERED:
        return infrastructure_fields(_REGISTERED[name].Params)
    return frozenset()


def installed_methods() -> dict[str, str]:
    """Installed plugins: entry-point name -> "module:Class"."""
    return {point.name: point.value for point in entry_points(group=ENTRY_POINT_GROUP)}


def _import(path: str, what: str) -> type[Any]:
    """The class `module:Class` names; a one-line error when it cannot be imported."""
    module_name, _, class_name = path.partition(":")
    if not module_name or not class_name:
        raise UsageError(f"method {what!r}: expected package.module:Class")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"method {what!r}: cannot import {module_name} ({exc})") from None
    cls = module
    for part in class_name.split("."):
        cls = getattr(cls, part, None)
        if cls is None:
            raise UsageError(f"method {what!r}: {module_name} has no {class_name}")
    return cls


def _path(cls: type[Any]) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"
