"""Whether the Hugging Face hub can be reached, asked once before any hub download.

Offline, transformers and datasets retry for tens of seconds and print a warning per retry; a two-second
connection check turns that into one clear line.
"""

from __future__ import annotations

import os
import socket
from functools import cache
from urllib.parse import urlparse


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


@cache
def hub_reachable(timeout: float = 2.0) -> bool:
    """False when HF_HUB_OFFLINE is set or the endpoint does not accept a TCP connection within `timeout`."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    parsed = urlparse(hub_endpoint())
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False
