"""Every cell of a sweep checked as `cachebench eval` checks its input, before any model loads or any cell runs:
a typo in cell 90 costs a second, not 89 cells of compute."""

from __future__ import annotations

from pathlib import Path

from cachebench.errors import UsageError
from cachebench.runs import EvalRequest
from cachebench.sweep.grid import Cell, Sweep


def check_cell(cell: Cell, out: Path) -> EvalRequest:
    """The checks `cachebench eval` makes for this cell (names, track, params, options), without running it."""
    from cachebench.models.loading import resolve_device, resolve_dtype
    from cachebench.params import parse_params
    from cachebench.registry import method_class, method_track
    from cachebench.taskspec import resolve_tasks

    track = method_track(cell.method)
    specs = resolve_tasks(cell.task)
    parse_params(method_class(cell.method).Params, list(cell.assignments()), owner=cell.method)
    data = cell.option("data")
    if data is not None and not Path(data).is_file():
        raise UsageError(f"data {data}: no such file")
    request = cell.request(out, 0)
    resolve_dtype(request.dtype, resolve_device(request.device))
    if track == "kv":
        from cachebench.eval_run import _check_request

        if request.llm_cost is not None:
            raise UsageError("llm_cost applies to semantic-cache cells only")
        _check_request(request)
    else:
        from cachebench.semantic.evaluate import _check

        for key in ("context_tokens", "compression", "attn_impl", "golden_history", "truncate"):
            if cell.option(key) is not None:
                raise UsageError(f"{key} applies to KV-cache cells only")
        if cell.shards > 1:
            raise UsageError("shards apply to KV-cache cells: a semantic cache's state is the stream so far, so "
                             "its requests cannot be split between workers")
        _check(request, specs)
    return request


def check_sweep(sweep: Sweep, out: Path) -> None:
    """A one-line UsageError naming the first cell that cannot run, or nothing."""
    for index, cell in enumerate(sweep.cells):
        try:
            check_cell(cell, out)
        except UsageError as exc:
            raise UsageError(f"{sweep.origin} cell {index} ({cell.label()}): {exc}") from None
