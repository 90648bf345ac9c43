"""Session fixtures for the real servers the semantic stores talk to: Redis and Chroma.

A test that needs a server reaches or starts one and fails loudly when it cannot: a skipped store test would let
CI pass without ever touching the store. Under pytest-xdist each worker starts its own servers on free ports.

    from semantic_servers import chroma_url, redis_url  # noqa: F401
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from cachebench.errors import UsageError
from cachebench.semantic.servers import chroma_server, redis_server

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


def _enter(stack: contextlib.ExitStack, start, what: str, attempts: int = 2) -> str:
    """Enter a server context, retrying once (another worker may take the free port first); fail loudly."""
    error: Exception | None = None
    for _ in range(attempts):
        try:
            return stack.enter_context(start())
        except UsageError as failure:
            error = failure
    pytest.fail(f"{what} is required by the semantic store tests and could not be reached or started: {error}",
                pytrace=False)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The Redis server on 127.0.0.1:6379 when one answers, else a throwaway redis-server on a free port."""
    with contextlib.ExitStack() as stack:
        yield _enter(stack, lambda: redis_server(DEFAULT_REDIS), "a Redis server (redis-server on PATH)")


@pytest.fixture(scope="session")
def chroma_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A `chroma run` server of this worker's own, on a free port, data in a temporary folder."""
    with contextlib.ExitStack() as stack:
        folder = tmp_path_factory.mktemp("chroma")
        yield _enter(stack, lambda: chroma_server(None, folder / "data"), "a Chroma server (`chroma run`)")
