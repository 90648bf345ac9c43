"""Where cachebench keeps converted models and fetched data: one user cache directory."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$CACHEBENCH_CACHE, else $XDG_CACHE_HOME/cachebench, else ~/.cache/cachebench (created on demand)."""
    explicit = os.environ.get("CACHEBENCH_CACHE")
    if explicit:
        root = Path(explicit)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = Path(base) / "cachebench"
    root.mkdir(parents=True, exist_ok=True)
    return root
