"""Document stores outside process memory: an SQLite file and a Redis server.

They hold what a hit fetches (prompt and response as JSON) beside the in-memory index, as in the
category-aware paper's hybrid design. `stored_bytes` counts the JSON each store holds, tracked client-side so
it costs no round trip. (cachebench.semantic.servers starts a throwaway server for tests and benchmarks.)
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import tempfile
import threading
from pathlib import Path

from cachebench.errors import UsageError
from cachebench.semantic.storage import Document


class SqliteDocuments:
    """Documents in one SQLite table (WAL, one connection shared by threads under a lock).

    With no path, a temporary file is created and removed on close. With a path, the table is named after the
    namespace (so runs sharing a file stay apart) and dropped on close: its documents mean nothing without the
    in-memory index that pointed at them.
    """

    def __init__(self, path: str | Path | None = None, namespace: str = "documents") -> None:
        self._temporary = path is None or str(path) == ""
        if self._temporary:
            handle, name = tempfile.mkstemp(prefix="cachebench-", suffix=".sqlite")
            os.close(handle)
            path = name
        self.path = Path(path)
        self._table = '"documents:' + namespace.replace('"', '""') + '"'
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL's durable-enough mode: no fsync per commit
            self._db.execute(f"DROP TABLE IF EXISTS {self._table}")
            self._db.execute(f"CREATE TABLE {self._table} (key INTEGER PRIMARY KEY, document TEXT NOT NULL)")
        except sqlite3.Error as error:
            raise UsageError(f"cannot use SQLite file {self.path} ({error}): pass --param sqlite_path=...") from None
        self._lock = threading.Lock()
        self._sizes: dict[int, int] = {}
        self._bytes = 0

    def put(self, key: int, document: Document) -> None:
        text = document.to_json()
        size = len(text.encode())
        with self._lock:
            self._db.execute(f"INSERT OR REPLACE INTO {self._table} (key, document) VALUES (?, ?)", (key, text))
            self._bytes += size - self._sizes.get(key, 0)
            self._sizes[key] = size

    def get(self, key: int) -> Document | None:
        with self._lock:
            row = self._db.execute(f"SELECT document FROM {self._table} WHERE key = ?", (key,)).fetchone()
        return Document.from_json(row[0]) if row else None

    def delete(self, key: int) -> None:
        with self._lock:
            self._db.execute(f"DELETE FROM {self._table} WHERE key = ?", (key,))
            self._bytes -= self._sizes.pop(key, 0)

    def stored_bytes(self) -> int:
        return self._bytes

    def close(self) -> None:
        with self._lock:
            if self._db is None:
                return
            if not self._temporary:
                self._db.execute(f"DROP TABLE IF EXISTS {self._table}")
            self._db.close()
            self._db = None
            if self._temporary:
                for suffix in ("", "-wal", "-shm"):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(f"{self.path}{suffix}")


def _redis_error(url: str, error: Exception) -> UsageError:
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return UsageError(f"cannot reach Redis at {url} ({reason}): start redis-server or pass --param redis_url=...")


class RedisDocuments:
    """Documents under `cachebench:{namespace}:{key}` on a Redis server; close deletes the namespace's keys."""

    def __init__(self, url: str, namespace: str) -> None:
        try:
            import redis
        except ImportError:
            raise UsageError("redis is not installed: pip install 'cachebench[semantic]'") from None
        self.url = url
        self._prefix = f"cachebench:{namespace}:"
        try:
            self._client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=10)
            self._client.ping()
        except (redis.exceptions.RedisError, ValueError, OSError) as error:
            raise _redis_error(url, error) from None
        self._lock = threading.Lock()
        self._sizes: dict[int, int] = {}
        self._bytes = 0
        self._closed = False

    def put(self, key: int, document: Document) -> None:
        text = document.to_json().encode()
        self._client.set(self._prefix + str(key), text)
        with self._lock:
            self._bytes += len(text) - self._sizes.get(key, 0)
            self._sizes[key] = len(text)

    def get(self, key: int) -> Document | None:
        text = self._client.get(self._prefix + str(key))
        return Document.from_json(text) if text is not None else None

    def delete(self, key: int) -> None:
        self._client.delete(self._prefix + str(key))
        with self._lock:
            self._bytes -= self._sizes.pop(key, 0)

    def stored_bytes(self) -> int:
        return self._bytes

    def close(self) -> None:
        """Delete every key of this namespace (SCAN, so a big server is not blocked) and close the pool."""
        if self._closed:
            return
        self._closed = True
        pattern = re.sub(r"([*?\[\]\\])", r"\\\1", self._prefix) + "*"
        batch: list[bytes] = []
        for name in self._client.scan_iter(match=pattern, count=1000):
            batch.append(name)
            if len(batch) >= 500:
                self._client.delete(*batch)
                batch.clear()
        if batch:
            self._client.delete(*batch)
        self._client.close()
        self._client.connection_pool.disconnect()
