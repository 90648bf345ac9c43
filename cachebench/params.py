"""Typed method parameters: declared as a frozen dataclass, set from the CLI as `--param name=value`.

A method's parameters are a dataclass whose fields carry a help text and optional bounds or choices. This module
turns `name=value` strings into a validated instance, describes the fields for `cachebench list methods`, and
writes the canonical JSON that result rows record.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from cachebench.errors import UsageError, unknown_name

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # result rows and numpy store integers as int64
MAX_TOKENS = 1 << 24  # a sane ceiling for token counts: far above any model's window, far below int64


def param(
    default: Any,
    help: str,
    *,
    low: float | None = None,
    high: float | None = None,
    choices: tuple[Any, ...] | None = None,
    infrastructure: bool = False,
) -> Any:
    """Declare one method parameter: its default, a help line, and optional inclusive bounds or choices.

    `infrastructure` marks a setting of where or how big the storage is (a store, a server URL, a path, a tier's
    capacity) rather than of what the method computes: it is recorded in `method_params` but does not split a
    result cell (`cell_params` leaves it out), so one method run against four stores is one cell."""
    return dataclasses.field(default=default, metadata={"help": help, "low": low, "high": high, "choices": choices,
                                                         "infrastructure": infrastructure})


@dataclass(frozen=True)
class NoParams:
    """Parameters of a method that takes none."""


@dataclass(frozen=True)
class ParamInfo:
    """What `list methods` shows for one parameter."""

    name: str
    type_name: str
    default: Any
    help: str
    constraint: str


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "|".join(str(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(name: str, raw: str, tp: Any) -> Any:
    """Convert the CLI string to the declared type, or raise UsageError naming the parameter."""
    origin = get_origin(tp)
    if origin is Literal:
        allowed = get_args(tp)
        for option in allowed:
            if str(option) == raw:
                return option
        raise UsageError(f"--param {name}={raw}: must be one of {', '.join(str(a) for a in allowed)}")
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if raw.lower() in ("none", "null") and len(args) < len(get_args(tp)):
            return None
        return _coerce(name, raw, args[0])
    try:
        if tp is bool:
            lowered = raw.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if tp is int:
            return _int64(name, raw)
        if tp is float:
            return _finite(name, raw)
        if tp is str:
            return raw
    except ValueError:
        raise UsageError(f"--param {name}={raw}: expected {_type_name(tp)}") from None
    raise UsageError(f"--param {name}: unsupported parameter type {tp!r}")


def _int64(name: str, raw: str) -> int:
    """An integer that fits int64: a larger one would overflow torch, numpy or the Parquet row far from here."""
    value = int(raw)
    if not INT64_MIN <= value <= INT64_MAX:
        raise UsageError(f"--param {name}={raw}: out of range (an integer must fit in 64 bits)")
    return value


def _finite(name: str, raw: str) -> float:
    """A finite float: NaN passes every bound check (all comparisons are false) and inf breaks arithmetic later."""
    value = float(raw)
    if not math.isfinite(value):
        raise UsageError(f"--param {name}={raw}: must be a finite number")
    return value


def _check_constraints(cls: type, values: Any) -> None:
    for f in dataclasses.fields(cls):
        value = getattr(values, f.name)
        meta = f.metadata
        if value is None:
            continue
        if meta.get("choices") is not None and value not in meta["choices"]:
            raise UsageError(f"--param {f.name}={value}: must be one of {', '.join(map(str, meta['choices']))}")
        if meta.get("low") is not None and value < meta["low"]:
            raise UsageError(f"--param {f.name}={value}: must be >= {meta['low']}")
        if meta.get("high") is not None and value > meta["high"]:
            raise UsageError(f"--param {f.name}={value}: must be <= {meta['high']}")


def parse_params(cls: type, assignments: list[str], owner: str) -> Any:
    """Build a validated parameter instance of `cls` from `name=value` strings given for method `owner`."""
    types = _field_types(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for item in assignments:
        if "=" not in item:
            raise UsageError(f"--param {item!r}: expected name=value")
        name, raw = (s.strip() for s in item.split("=", 1))
        if name not in known:
            if not known:
                raise UsageError(f"--param {name}: method {owner!r} takes no parameters")
            raise unknown_name(f"parameter of {owner!r}", name, known)
        if name in values:
            raise UsageError(f"--param {name} given twice")
        values[name] = _coerce(name, raw, types[name])
    try:
        instance = cls(**values)
    except (ValueError, TypeError) as exc:  # __post_init__ cross-field checks raise ValueError
        raise UsageError(f"--param for {owner!r}: {exc}") from None
    _check_constraints(cls, instance)
    return instance


def describe_params(cls: type) -> list[ParamInfo]:
    """Describe each declared parameter for listings and docs."""
    types = _field_types(cls)
    infos = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        parts = []
        if meta.get("low") is not None:
            parts.append(f">= {meta['low']}")
        if meta.get("high") is not None:
            parts.append(f"<= {meta['high']}")
        if meta.get("choices") is not None:
            parts.append("one of " + ", ".join(map(str, meta["choices"])))
        infos.append(ParamInfo(f.name, _type_name(types[f.name]), f.default, meta.get("help", ""), ", ".join(parts)))
    return infos


def canonical_json(values: Any) -> str:
    """Stable JSON of a parameter instance: sorted keys, no spaces, so equal settings compare equal."""
    return json.dumps(dataclasses.asdict(values), sort_keys=True, separators=(",", ":"))


def infrastructure_fields(cls: type) -> frozenset[str]:
    """The parameters of `cls` declared with `infrastructure=True` (see `param`)."""
    return frozenset(f.name for f in dataclasses.fields(cls) if f.metadata.get("infrastructure"))
