"""What every built-in method is and which parameters it takes, read as plain data without importing it.

A built-in method is declared once: its class in baselines/kv or baselines/semantic (`name`, `summary`, `track`,
`Params`). Those modules import torch, so asking the classes costs seconds; `python -m cachebench.method_manifest
--write` imports them all once and writes what the command line needs to know about each (name, track, summary,
the class's `module:Class` path, every typed parameter) to method_manifest.json beside this file. Reading that
file lets the command line check a method name and its `--param name=value` settings, list the methods, and tell
which parameters are infrastructure, with nothing but the standard library. tests/test_fast_feedback.py fails when
the committed file differs from what the classes give now; cachebench.registry still finds (slowly, by importing
it) a baselines module the file does not know.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import operator
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cachebench.errors import unknown_name
from cachebench.params import param, parse_params

REGENERATE = "python -m cachebench.method_manifest --write"
MANIFEST = Path(__file__).with_name("method_manifest.json")
PACKAGES = ("cachebench.baselines.kv", "cachebench.baselines.semantic")  # every module in them is a built-in's


@dataclass(frozen=True)
class ParamSpec:
    """One declared parameter: as `cachebench.params.param` takes it, plus its name and annotated type."""

    name: str
    type: Any
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] | None = None
    infrastructure: bool = False


@dataclass(frozen=True)
class MethodSpec:
    """One registered method: `exclusive` names pairs of parameters that may not both be set; `path` is the class
    as `package.module:Class` (empty for a plugin described from its class)."""

    name: str
    track: Literal["kv", "semantic"]
    summary: str
    params: tuple[ParamSpec, ...] = ()
    exclusive: tuple[tuple[str, str], ...] = ()
    path: str = ""


# ---------------------------------------------------------------------------------------------------------------
# Types as text: the annotations parse_params understands (bool, int, float, str, Literal[...], X | None)

_TYPES: dict[str, Any] = {"bool": bool, "int": int, "float": float, "str": str, "None": type(None)}


def type_text(tp: Any) -> str:
    """`tp` as the manifest writes it: `int`, `float | None`, `Literal["avg", "max"]` (arguments as JSON)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "Literal" + json.dumps(list(typing.get_args(tp)), ensure_ascii=False)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_text(arg) for arg in typing.get_args(tp))
    for text, known in _TYPES.items():
        if tp is known:
            return text
    raise ValueError(f"unsupported parameter type {tp!r} (parse_params takes bool, int, float, str, Literal, X | None)")


def parse_type(text: str) -> Any:
    """The Python type `type_text` wrote as `text`."""
    parts: list[Any] = []
    rest = text
    while True:
        if rest.startswith("Literal["):
            args, end = json.JSONDecoder().raw_decode(rest, len("Literal"))
            parts.append(Literal[tuple(args)])
        else:
            end = rest.find(" | ") if " | " in rest else len(rest)
            if rest[:end] not in _TYPES:
                raise ValueError(f"cannot read parameter type {text!r}")
            parts.append(_TYPES[rest[:end]])
        rest = rest[end:]
        if not rest:
            return functools.reduce(operator.or_, parts)
        if not rest.startswith(" | "):
            raise ValueError(f"cannot read parameter type {text!r}")
        rest = rest[3:]


# ---------------------------------------------------------------------------------------------------------------
# Reading


def _load(path: Path) -> tuple[dict[str, MethodSpec], frozenset[str], dict[str, dict[str, Any]]]:
    """The manifest's methods, modules and effective defaults; none when the file is missing (the registry then
    finds every built-in by importing its module, and `--write` can make the file)."""
    if not path.exists():
        return {}, frozenset(), {}
    data = json.loads(path.read_text(encoding="utf-8"))
    methods, defaults = {}, {}
    for entry in data["methods"]:
        params = tuple(
            ParamSpec(p["name"], parse_type(p["type"]), p["default"], p["help"], p["low"], p["high"],
                      None if p["choices"] is None else tuple(p["choices"]), p["infrastructure"])
            for p in entry["params"])
        exclusive = tuple((first, second) for first, second in entry["exclusive"])
        methods[entry["name"]] = MethodSpec(entry["name"], entry["track"], entry["summary"], params, exclusive,
                                            entry["class"])
        defaults[entry["name"]] = entry["effective_defaults"]
    return methods, frozenset(data["modules"]), defaults


METHODS: dict[str, MethodSpec]  # every built-in the manifest knows, by name
MODULES: frozenset[str]  # the modules the manifest was generated from (a module outside it is searched slowly)
METHODS, MODULES, _DEFAULTS = _load(MANIFEST)


def method_spec(name: str) -> MethodSpec:
    """The manifest entry of `name`, or the one-line unknown-name error with the closest names."""
    if name not in METHODS:
        raise unknown_name("method", name, METHODS)
    return METHODS[name]


def _exclusive_check(pairs: tuple[tuple[str, str], ...]) -> Any:
    """A `__post_init__` refusing both of a pair, worded as BudgetParams words it."""

    def __post_init__(self: Any) -> None:
        for first, second in pairs:
            if getattr(self, first) is not None and getattr(self, second) is not None:
                raise ValueError(f"give {first} or {second}, not both")

    return __post_init__


@functools.cache
def params_class(name: str) -> type:
    """A frozen dataclass declaring `name`'s parameters as the real class does, so `parse_params` validates
    `--param` settings against it with the same messages, without importing the method."""
    spec = method_spec(name)
    fields = [(p.name, p.type, param(p.default, p.help, low=p.low, high=p.high, choices=p.choices,
                                     infrastructure=p.infrastructure)) for p in spec.params]
    namespace = {"__post_init__": _exclusive_check(spec.exclusive)} if spec.exclusive else {}
    return dataclasses.make_dataclass("ManifestParams", fields, frozen=True, namespace=namespace)


def check_params(name: str, assignments: list[str]) -> None:
    """Refuse an unknown method or a bad `--param` (UsageError, one line) before anything heavy is imported."""
    parse_params(params_class(name), assignments, owner=name)


def infrastructure_params(name: str) -> frozenset[str]:
    """The parameters of `name` declared `infrastructure`; empty for a name this version does not know."""
    spec = METHODS.get(name)
    return frozenset(p.name for p in spec.params if p.infrastructure) if spec else frozenset()


def effective_defaults(name: str) -> dict[str, Any]:
    """The parameters `name` runs with when none is given, as its rows record them: its Params class built with
    no argument (so a budgeted method's ratio is resolved as BudgetParams resolves it). Tables compare a row's
    parameters with these to show only what was changed."""
    method_spec(name)
    return dict(_DEFAULTS[name])


# ---------------------------------------------------------------------------------------------------------------
# Discovery and generation (these import the method modules, and with them torch)


def builtin_modules() -> list[str]:
    """Every module in baselines/kv and baselines/semantic now, found without importing any of them."""
    import importlib
    import pkgutil

    found = []
    for package in PACKAGES:
        path = importlib.import_module(package).__path__
        found += [f"{package}.{info.name}" for info in pkgutil.iter_modules(path) if not info.ispkg]
    return sorted(found)


def defined_methods(module: types.ModuleType) -> list[type]:
    """The method classes `module` itself defines (KVMethod or SemanticMethod subclasses with a `name`; a base
    without one, or a class it imports, is not its method)."""
    from cachebench.method import KVMethod
    from cachebench.semantic.method import SemanticMethod

    return [cls for cls in vars(module).values()
            if isinstance(cls, type) and issubclass(cls, KVMethod | SemanticMethod)
            and cls.__module__ == module.__name__ and isinstance(getattr(cls, "name", None), str)]


def _exclusive_pairs(params: type) -> list[list[str]]:
    """The pairs a shared Params base refuses together in its `__post_init__`: BudgetParams' ratio or budget."""
    from cachebench.kvcompress.budget import BudgetParams

    return [["ratio", "budget"]] if issubclass(params, BudgetParams) else []


def _plain(value: Any, what: str) -> Any:
    """`value` if JSON writes and reads it back as the same value of the same type (0 stays 0, 0.0 stays 0.0)."""
    back = json.loads(json.dumps(value))
    if back != value or type(back) is not type(value):
        raise ValueError(f"{what} = {value!r} cannot be written to the manifest (JSON would read back {back!r})")
    return value


def describe(cls: type) -> dict[str, Any]:
    """The manifest entry of method class `cls`."""
    where = f"{cls.__module__}:{cls.__qualname__}"
    if not isinstance(getattr(cls, "summary", None), str):
        raise ValueError(f"{where} needs a one-line `summary`")
    hints = typing.get_type_hints(cls.Params)
    params = []
    for field in dataclasses.fields(cls.Params):
        meta, what = field.metadata, f"{where} parameter {field.name}"
        choices = meta.get("choices")
        params.append({
            "name": field.name,
            "type": type_text(hints[field.name]),
            "default": _plain(field.default, what),
            "help": meta.get("help", ""),
            "low": _plain(meta.get("low"), what + " low"),
            "high": _plain(meta.get("high"), what + " high"),
            "choices": None if choices is None else _plain(list(choices), what + " choices"),
            "infrastructure": bool(meta.get("infrastructure")),
        })
    return {
        "name": cls.name,
        "track": cls.track,
        "summary": cls.summary,
        "class": where,
        "exclusive": _exclusive_pairs(cls.Params),
        "effective_defaults": _plain(dataclasses.asdict(cls.Params()), f"{where} Params()"),
        "params": params,
    }


def generate() -> str:
    """The manifest's text as the classes in baselines/ give it now: every module is imported."""
    import importlib

    modules = builtin_modules()
    entries: dict[str, dict[str, Any]] = {}
    for module_name in modules:
        for cls in defined_methods(importlib.import_module(module_name)):
            entry = describe(cls)
            if entry["name"] in entries:
                raise ValueError(f"two built-in methods are named {entry['name']!r}: {entries[entry['name']]['class']} "
                                 f"and {entry['class']}")
            entries[entry["name"]] = entry
    ordered = sorted(entries.values(), key=lambda e: (e["track"], e["name"]))

    def dump(value: Any) -> str:
        return json.dumps(value, ensure_ascii=False)

    def joined(items: list[str], indent: str) -> list[str]:
        return [indent + item + ("," if i < len(items) - 1 else "") for i, item in enumerate(items)]

    methods = []
    for entry in ordered:  # one line per method's header and per parameter, so a change diffs as one line
        head = ", ".join(f"{dump(key)}: {dump(value)}" for key, value in entry.items() if key != "params")
        methods.append("\n".join([f"{{{head},", '   "params": [', *joined([dump(p) for p in entry["params"]], "    "),
                                  "   ]", "  }"]))
    lines = ["{", f' "generated_by": {dump(REGENERATE + " (from the classes in baselines/; do not edit)")},',
             f' "modules": {dump(modules)},', ' "methods": [', *joined(methods, "  "), " ]", "}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """`--write`: regenerate method_manifest.json; `--check`: exit 1 when it differs from the classes; neither:
    print what would be written."""
    args = sys.argv[1:] if argv is None else argv
    if args not in ([], ["--write"], ["--check"]):
        print(f"usage: {REGENERATE} | --check", file=sys.stderr)
        return 2
    text = generate()
    if args == ["--write"]:
        MANIFEST.write_text(text, encoding="utf-8")
        print(f"wrote {MANIFEST} ({text.count(chr(10))} lines)")
    elif args == ["--check"]:
        if MANIFEST.read_text(encoding="utf-8") != text:
            print(f"{MANIFEST} is out of date with the method classes: run {REGENERATE}", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
