"""cachebench: benchmark and evaluation suite for LLM caching methods.

The Python API (docs/api.md): `evaluate` runs a method on a task as `cachebench eval` does and returns its rows;
`read_results` reads result files of any schema version as one table; `register_method` makes a method class
known by its name; `KVMethod`, `EvictionMethod` and `SemanticMethod` are the classes a method extends, `param`
and `BudgetParams` declare its parameters. Each is imported on first use, so `import cachebench` (and the CLI)
stays light.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "evaluate": "cachebench.api",
    "read_results": "cachebench.results",
    "register_method": "cachebench.registry",
    "KVMethod": "cachebench.method",
    "EvictionMethod": "cachebench.kvcompress.evictor",
    "SemanticMethod": "cachebench.semantic.method",
    "param": "cachebench.params",
    "BudgetParams": "cachebench.kvcompress.budget",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cachebench' has no attribute {name!r}")
