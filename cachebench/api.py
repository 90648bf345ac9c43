"""The Python API: what `cachebench eval` does, callable from a notebook or a script.

    import cachebench
    rows = cachebench.evaluate(method="snapkv", task="multiturn.passkey", params={"ratio": 0.75}, limit=2)
    frame = rows.to_pandas()

`evaluate` runs exactly the CLI's path (the same checks, the same writer: the rows are also written under `out`)
and returns the rows as a pyarrow table of the current schema (docs/results.md). Methods may be built-in names,
plugin paths (`package.module:Class`) or classes: a class is registered (cachebench.registry.register_method)
and run by its name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from cachebench.errors import UsageError


def evaluate(method: str | type, task: str, *, params: Mapping[str, Any] | Sequence[str] = (),
             out: str | Path = "results", **options: Any) -> pa.Table:
    """Run `method` on `task` as `cachebench eval --method ... --task ...` does and return its rows.

    `params` are the method's parameters (a mapping, or `name=value` strings as `--param` takes them); `options`
    are the other `eval` options by their Python names (model, dtype, device, mode, limit, seed, context_tokens,
    max_new_tokens, compression, data, include_path, model_args, ...). Bad input raises UsageError with the CLI's
    one-line message; a run whose rows could not be written where asked raises after writing them to the fallback
    file the message names. Rows of failed episodes are returned with `error` set, as the CLI writes them."""
    from cachebench.eval_run import EvalRequest, run_eval
    from cachebench.registry import register_method
    from cachebench.results import read_results, to_table

    name = register_method(method).name if isinstance(method, type) else method
    fields = {field.name for field in dataclasses.fields(EvalRequest)} - {"method", "task", "params", "out"}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise UsageError(f"evaluate() got unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    for listed in ("include_path", "model_args"):
        if isinstance(options.get(listed), str | Path):
            options[listed] = (str(options[listed]),)
        elif listed in options:
            options[listed] = tuple(str(value) for value in options[listed])
    request = EvalRequest(method=name, task=task, params=_assignments(params), out=Path(out), **options)
    outcome = run_eval(request)
    if outcome.problem:
        raise UsageError(outcome.problem)
    if outcome.path is None:
        return to_table(outcome.rows)
    return read_results([outcome.path])


def _assignments(params: Mapping[str, Any] | Sequence[str]) -> tuple[str, ...]:
    """`--param` strings from a mapping (None as `none`, booleans as true/false) or from strings as they are."""
    if isinstance(params, str):
        return (params,)
    if isinstance(params, Mapping):
        return tuple(f"{key}={_text(value)}" for key, value in params.items())
    return tuple(params)


def _text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
