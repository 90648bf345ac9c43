"""Start the real servers a store needs when the user (or a test) did not give one: a Chroma vector-DB server and
a Redis server, each on a free loopback port in a temporary folder, stopped when the block ends.

Benchmarks and tests use these so a run measures a real network round trip; a server that cannot start is a
one-line UsageError, never a silent fallback to an in-process store.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from cachebench.errors import UsageError

START_TIMEOUT_S = 90.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _executable(name: str) -> str | None:
    beside = Path(sys.executable).parent / name  # the venv's own console script first
    return str(beside) if beside.exists() else shutil.which(name)


def _wait(ready: Callable[[], bool], process: subprocess.Popen, what: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
            raise UsageError(f"{what} exited at start ({process.returncode}): {' '.join(tail)[:200]}")
        if ready():
            return
        time.sleep(0.25)
    process.terminate()
    raise UsageError(f"{what} did not answer within {START_TIMEOUT_S:.0f} s")


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def chroma_server(url: str | None = None, path: Path | None = None) -> Iterator[str]:
    """Yields a Chroma server's URL: `url` as given, else a new `chroma run` on a free port (data in `path` or a
    temporary folder), stopped at the end."""
    if url:
        yield url
        return
    executable = _executable("chroma")
    if executable is None:
        raise UsageError("no `chroma` command to start a Chroma server: pip install 'cachebench[semantic]'")
    with tempfile.TemporaryDirectory() as scratch:
        folder = path or Path(scratch) / "data"
        folder.mkdir(parents=True, exist_ok=True)
        port = free_port()
        log = Path(scratch) / "chroma.log"
        with log.open("wb") as sink:
            process = subprocess.Popen([executable, "run", "--host", "127.0.0.1", "--port", str(port), "--path",
                                        str(folder)], stdout=sink, stderr=subprocess.STDOUT)
        address = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"{address}/api/v2/heartbeat", timeout=1) as response:
                    return response.status == 200
            except OSError:
                return False

        try:
            _wait(ready, process, f"chroma run on port {port}", log)
            yield address
        finally:
            _stop(process)


def redis_reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def redis_server(url: str | None = "redis://127.0.0.1:6379/0") -> Iterator[str]:
    """Yields a Redis URL: `url` when a server answers there, else a new `redis-server` on a free port that keeps
    nothing on disk, stopped at the end."""
    if url:
        from urllib.parse import urlparse

        parsed = urlparse(url)
        if redis_reachable(parsed.hostname or "127.0.0.1", parsed.port or 6379):
            yield url
            return
    executable = _executable("redis-server")
    if executable is None:
        raise UsageError(f"no Redis server at {url} and no `redis-server` command to start one")
    with tempfile.TemporaryDirectory() as scratch:
        port = free_port()
        log = Path(scratch) / "redis.log"
        with log.open("wb") as sink:
            process = subprocess.Popen([executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                        "--appendonly", "no", "--dir", scratch], stdout=sink, stderr=subprocess.STDOUT)
        try:
            _wait(lambda: redis_reachable("127.0.0.1", port), process, f"redis-server on port {port}", log)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            _stop(process)
