"""cachebench: benchmark and evaluation suite for LLM caching methods.

The Python API (docs/api.md): `evaluate` runs a method on a task as `cachebench eval` does and returns its rows;
`read_results` reads result files of any schema version as one table; `register_method` makes a method class
known by its name; `KVMethod`, `EvictionMethod` and `SemanticMethod` are the classes a method extends, `param`
and `BudgetParams` declare its parameters. Each is imported on first use, so `import cachebench` (and the CLI)
stays light.
"""

from __future__ import annotations

import os
import sys
from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# tasks/ and baselines/ sit beside this package in the repository and install as cachebench.tasks and
# cachebench.baselines (pyproject.toml's package-dir). An installed copy finds them inside itself. In a source
# tree nothing would map them but an editable install's finder, which always points at the checkout that was
# installed, so a second checkout run from its own root would silently import the first one's methods and tasks.
# When this package sits in a checkout (pyproject.toml, baselines/ and tasks/ beside it), a finder at the front
# of sys.meta_path maps exactly those two packages to the folders next to it; their submodules follow their
# __path__.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CHECKOUT = {f"{__name__}.{folder}": os.path.join(_ROOT, folder) for folder in ("baselines", "tasks")}


class _CheckoutFinder:
    """The meta-path finder of this checkout's cachebench.baselines and cachebench.tasks."""

    def __init__(self, folders: dict[str, str]) -> None:
        self.folders = folders

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        folder = self.folders.get(fullname)
        if folder is None:
            return None
        from importlib.util import spec_from_file_location

        return spec_from_file_location(fullname, os.path.join(folder, "__init__.py"),
                                       submodule_search_locations=[folder])


if os.path.isfile(os.path.join(_ROOT, "pyproject.toml")) and all(map(os.path.isdir, _CHECKOUT.values())):
    sys.meta_path[:] = [_CheckoutFinder(_CHECKOUT),
                        *(f for f in sys.meta_path if type(f).__name__ != _CheckoutFinder.__name__)]

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
