"""Method lookup: names to classes, imported only when asked for.

Two tracks share one namespace of method names: KV-cache methods (cachebench.method.KVMethod) and semantic
response caches (cachebench.semantic.method.SemanticMethod); a class's `track` says which. Methods come from
three places, and a run's rows record the class's own `name` whichever it was:

- the built-ins: the method classes the modules of baselines/kv and baselines/semantic define. Their names and
  `module:Class` paths come from cachebench.method_manifest (generated from those classes, read without importing
  them); a module the manifest does not know yet is imported when a name is not found elsewhere, so a new method
  file works before the manifest is regenerated, only slower;
- plugins: `--method package.module:Class` names any importable method class, and installed packages declare
  theirs in the `cachebench.methods` entry-point group (`name = "package.module:Class"`);
- classes registered at run time with `register_method` (the Python API).
"""

from __future__ import annotations

import importlib
import warnings
from importlib.metadata import entry_points
from typing import Any

from cachebench import method_manifest
from cachebench.errors import UsageError, unknown_name
from cachebench.params import infrastructure_fields, parse_params

ENTRY_POINT_GROUP = "cachebench.methods"
_REGISTERED: dict[str, type[Any]] = {}  # plugin classes by their name, once loaded or registered
_UNLISTED: dict[str, type[Any]] | None = None  # built-ins of modules the manifest does not know, once searched


def method_names() -> list[str]:
    """Built-in, registered and installed (entry-point) method names."""
    return sorted({*method_manifest.METHODS, *_unlisted(), *_REGISTERED, *installed_methods()})


def method_track(name: str) -> str:
    """"kv" or "semantic"; a built-in's without importing it."""
    if name in method_manifest.METHODS:
        return method_manifest.METHODS[name].track
    return method_class(name).track


def method_class(name: str) -> type[Any]:
    """The class of a built-in name, an installed or registered plugin's name, or a `module:Class` path."""
    if name in method_manifest.METHODS:
        return _builtin(name, method_manifest.METHODS[name].path)
    if name in _REGISTERED:
        return _REGISTERED[name]
    if ":" in name:
        return register_method(_import(name, name))
    if name in _unlisted():
        return _unlisted()[name]
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
    if name in method_manifest.METHODS or name in _unlisted():
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
    if name in method_manifest.METHODS:
        return method_manifest.infrastructure_params(name)
    cls = _REGISTERED.get(name) or _unlisted().get(name)
    return infrastructure_fields(cls.Params) if cls is not None else frozenset()


def installed_methods() -> dict[str, str]:
    """Installed plugins: entry-point name -> "module:Class"."""
    return {point.name: point.value for point in entry_points(group=ENTRY_POINT_GROUP)}


def _builtin(name: str, path: str) -> type[Any]:
    """The built-in class the manifest names `path`; a manifest that no longer matches the classes is a bug of
    this checkout, said with the command that fixes it."""
    module_name, _, class_name = path.partition(":")
    stale = f"cachebench/method_manifest.json is out of date (run {method_manifest.REGENERATE})"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise RuntimeError(f"method {name!r}: {module_name} does not exist; {stale}") from None
    cls = getattr(module, class_name, None)
    if getattr(cls, "name", None) != name:
        raise RuntimeError(f"method {name!r}: {path} is not a method class named {name!r}; {stale}")
    return cls


def _unlisted() -> dict[str, type[Any]]:
    """The methods of every baselines module the manifest was not generated from, by name: each such module is
    imported (torch with it), once per process. Empty, after a directory listing, when the manifest is current."""
    global _UNLISTED
    if _UNLISTED is None:
        found: dict[str, type[Any]] = {}
        for module_name in method_manifest.builtin_modules():
            if module_name in method_manifest.MODULES:
                continue
            warnings.warn(f"{module_name} is not in cachebench/method_manifest.json; its methods are found by "
                          f"importing it (run {method_manifest.REGENERATE})", stacklevel=2)
            for cls in method_manifest.defined_methods(importlib.import_module(module_name)):
                if cls.name not in method_manifest.METHODS:
                    found.setdefault(cls.name, cls)
        _UNLISTED = found
    return _UNLISTED


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
