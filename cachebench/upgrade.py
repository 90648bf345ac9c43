"""`cachebench upgrade`: rewrite result files of older schema versions in the current one, in place.

Readers of this package read every version (cachebench.results.read_results adds what a file lacks), but a plain
`pd.read_parquet(folder)` or a DuckDB scan takes one file's schema and drops or misreads the columns others lack.
Upgraded files hold the full current schema, with the derived columns (cachebench.derived) filled in, so one line
of pandas or DuckDB reads a folder of them. Each file is replaced atomically; a current file is left untouched.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from cachebench.resultdb import checked_file
from cachebench.results import SCHEMA_VERSION, _files, read_results, write_atomic


def upgrade(paths: Iterable[str | Path]) -> list[tuple[Path, str]]:
    """Rewrite every older result file under `paths`; return (file, the version it had) for each one rewritten."""
    done = []
    for file in _files(paths):
        version, _ = checked_file(file)  # a foreign or damaged file is refused in one line, before any write
        if version == SCHEMA_VERSION:
            continue
        table = read_results([file])
        write_atomic(table.to_pylist(), file)
        done.append((file, version))
    return done
