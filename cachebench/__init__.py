"""cachebench: benchmark and evaluation suite for LLM caching methods."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["read_results"]


def __getattr__(name: str) -> Any:
    """`cachebench.read_results` (every schema version as one table of the current schema), imported on first use
    so the CLI does not pay for pyarrow before it needs it."""
    if name == "read_results":
        from cachebench.results import read_results

        return read_results
    raise AttributeError(f"module 'cachebench' has no attribute {name!r}")
