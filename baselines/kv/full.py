"""`full`: the uncompressed reference every other method is compared against."""

from __future__ import annotations

from cachebench.method import KVMethod


class FullCache(KVMethod):
    """Keeps every key and value; the base class's behaviour, registered under its own name."""

    name = "full"
    summary = "Uncompressed reference: every key and value is kept (quality and cost baseline)."
