"""Columns worked out from the others once, when rows are written, so that no reader works them out again.

`track`, `cell_params`, `request_ttft_ms` and `exact_match` used to be inferred by each reader (from the metric
name, from the params JSON, by a formula in Python and again in SQL, by re-scoring predictions at display time).
Since schema version 7 they are written with the rows; `derive` fills in whichever are null, which is how the
writer sets them and how files of older versions are read (cachebench.results.read_results).
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

SEMANTIC_METRIC = "semantic_outcome"  # the metric of every semantic-cache row (cachebench.taskspec.SEMANTIC_METRIC)
EM_METRIC = "longconvqa_f1"  # rows of this metric also get exact match (cachebench.metrics.longconvqa_em)


def identity_params(method: str | None, params_json: str | None) -> str | None:
    """`params_json` without the method's infrastructure settings (store, server URLs, paths, capacities), in the
    same canonical form; unchanged for a method this version does not know or a value that is not JSON."""
    if method is None or params_json is None:
        return params_json
    from cachebench.registry import infrastructure_params

    dropped = infrastructure_params(method)
    if not dropped:
        return params_json
    try:
        values = json.loads(params_json)
    except ValueError:
        return params_json
    if not isinstance(values, dict):
        return params_json
    kept = {name: value for name, value in values.items() if name not in dropped}
    return json.dumps(kept, sort_keys=True, separators=(",", ":"))


def derive(table: pa.Table) -> pa.Table:
    """`table` with its null `track`, `cell_params`, `request_ttft_ms` and `exact_match` values worked out."""
    if table.num_rows == 0:
        return table
    table = _fill(table, "track", pc.if_else(pc.equal(pc.fill_null(table["metric"], ""), SEMANTIC_METRIC),
                                               "semantic", "kv"))
    table = _fill(table, "cell_params", _cell_params(table))
    table = _fill(table, "request_ttft_ms", _request_ttft(table))
    return _fill(table, "exact_match", _exact_match(table))


def _fill(table: pa.Table, name: str, values: pa.Array | pa.ChunkedArray) -> pa.Table:
    index = table.schema.get_field_index(name)
    column = table[name]
    if column.null_count == 0:
        return table
    filled = pc.coalesce(column, pc.cast(values, column.type))
    return table.set_column(index, table.schema.field(index), filled)


def _cell_params(table: pa.Table) -> pa.Array:
    """Per row, identity_params of its (method, method_params), computed once per distinct pair."""
    methods = table["method"].to_pylist()
    params = table["method_params"].to_pylist()
    known: dict[tuple[Any, Any], str | None] = {}
    out = []
    for pair in zip(methods, params, strict=True):
        if pair not in known:
            known[pair] = identity_params(*pair)
        out.append(known[pair])
    return pa.array(out, pa.string())


def _request_ttft(table: pa.Table) -> pa.Array:
    """Time to first token of the request each row stands for, the context's prefill included where the request
    paid for it: ttft_ms, plus prefill_ms on multi-request rows (without reuse a request's context is prefilled
    again) and on a multi-turn episode's first turn (later turns find the context cached). This is the figure a
    serving engine (vLLM, SGLang) reports as TTFT; `ttft_ms` is the question's part only. KV rows only; a perf
    row's ttft_ms is already the whole request's (its prefill, then the first token)."""
    perf = pc.equal(pc.fill_null(table["track"], ""), "perf")
    with_context = pc.and_(pc.invert(perf), pc.or_(pc.equal(pc.fill_null(table["mode"], ""), "multi-request"),
                                                   pc.equal(pc.fill_null(table["turn"], -1), 0)))
    total = pc.if_else(with_context, pc.add(table["ttft_ms"], table["prefill_ms"]), table["ttft_ms"])
    semantic = pc.equal(pc.fill_null(table["metric"], ""), SEMANTIC_METRIC)
    return pc.if_else(semantic, pa.scalar(None, pa.float64()), pc.cast(total, pa.float64()))


def _exact_match(table: pa.Table) -> pa.Array:
    """Exact match of the rows scored with EM_METRIC (null elsewhere and on failed rows)."""
    wanted = pc.and_(pc.equal(pc.fill_null(table["metric"], ""), EM_METRIC),
                     pc.and_(pc.is_null(table["exact_match"]), pc.is_null(table["error"])))
    out: list[float | None] = [None] * table.num_rows
    rows = pc.indices_nonzero(pc.fill_null(wanted, False)).to_pylist()
    if rows:
        from cachebench.metrics import longconvqa_em, longconvqa_meta

        picked = table.take(pa.array(rows)).select(["prediction", "references", "category"]).to_pydict()
        for position, row in enumerate(rows):
            references = picked["references"][position] or []
            out[row] = float(longconvqa_em(picked["prediction"][position] or "", references,
                                           longconvqa_meta(picked["category"][position], references)))
    return pa.array(out, pa.float64())
