"""A tiered, content-addressed store of KV blocks: device memory, (pinned) CPU memory, safetensors files on disk.

Reuse methods (prefix caching, LMCache-style offloading, chunk stores for CacheBlend/KVLink) keep the keys and values
of token blocks here and ask for them again in later requests, or in later runs through the disk tier. A block is
addressed by a string the caller derives from its tokens: `chain_key` for prefix caching (the key depends on every
token before the block, so equal keys mean equal prefixes) and `content_key` for chunks placed at any position.

Tiers, each with a byte capacity (0 disables it) and its own least-recently-used order. Blocks move only inside
`put` and `get`; there are no background threads.

- device: tensors on the store's device, in its dtype. Evicting the LRU block demotes it to cpu.
- cpu: host memory, pinned when the device is CUDA so promotion copies are fast. Evicting drops the block (with the
  disk tier on it is already on disk: writes go through).
- disk: one safetensors file per block under `disk_dir / namespace`, LRU files deleted over capacity. A file is written
  under a temporary name and renamed in, so a killed run never leaves a half-written block under a real name. Every
  load checks format version, namespace, key, dtype, layout and a checksum; a file that fails is deleted and counted
  as corrupt: a damaged block is a miss, never served. A new store indexes the files already present (LRU order from
  modification times, which hits refresh), so a later run hits what an earlier run wrote.

A hit in cpu or disk is promoted to the device tier. A namespace must name everything that changes the KV of a token
sequence (model, weights, dtype, method variant): blocks of another namespace are never mixed in. Blocks returned by
`get` share storage with the store, so treat them as read-only (clone before modifying in place). Not thread-safe.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import struct
import sys
import time
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

TIERS = ("device", "cpu", "disk")
FORMAT = "cachebench.kvblock"
FORMAT_VERSION = "1"

_SUFFIX = ".safetensors"
_TENSOR_NAMES = ("keys", "values", "tokens")
_KEY_PATTERN = re.compile(r"[0-9A-Za-z_-]{1,128}")
_NAMESPACE_PATTERN = re.compile(r"[0-9A-Za-z_.+=@-]{1,200}")
_TEMP_PATTERN = re.compile(r"\.[0-9A-Za-z_-]{1,128}\.(?P<pid>\d+)\.\d+\.tmp")
_STALE_TEMP_SECONDS = 3600  # no block write takes this long: older temporary files are leftovers whatever their pid


# ----------------------------------------------------------------------------------------------------------- keys


def _token_tuple(tokens: Sequence[int]) -> tuple[int, ...]:
    """Token ids as plain ints, whether they come as a list, a tuple, an array or a 1-D tensor."""
    if hasattr(tokens, "tolist"):
        tokens = tokens.tolist()
    return tuple(int(t) for t in tokens)


def _token_bytes(tokens: tuple[int, ...]) -> bytes:
    return struct.pack(f"<{len(tokens)}q", *tokens)


def _hash_fields(person: bytes, fields: Sequence[bytes]) -> str:
    """blake2b over length-prefixed fields, so no two different field lists hash the same bytes."""
    digest = hashlib.blake2b(digest_size=16, person=person)
    for value in fields:
        digest.update(struct.pack("<Q", len(value)))
        digest.update(value)
    return digest.hexdigest()


def chain_key(parent: str | None, tokens: Sequence[int], namespace: str) -> str:
    """Key of a prefix-cache block: the parent block's key (None for the first block) hashed with this block's tokens.

    Chaining makes the key depend on every token since the start of the sequence, as serving engines' prefix caches
    do, so a hit means the whole prefix matches, not only this block.
    """
    fields = [namespace.encode(), (parent or "").encode(), _token_bytes(_token_tuple(tokens))]
    return _hash_fields(b"cachebench.chain", fields)


def content_key(tokens: Sequence[int], namespace: str, *parts: str) -> str:
    """Position-independent key of a chunk: the same tokens (and `parts`, e.g. a method variant) give the same key
    wherever the chunk appears, which is what chunk-reuse methods look blocks up by."""
    fields = [namespace.encode(), *(part.encode() for part in parts), _token_bytes(_token_tuple(tokens))]
    return _hash_fields(b"cachebench.chunk", fields)


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not _KEY_PATTERN.fullmatch(key):
        raise ValueError(f"block key must be 1-128 characters of [0-9A-Za-z_-] (a hex digest), got {key!r}")


# --------------------------------------------------------------------------------------------------------- blocks


@dataclass(eq=False)
class KVBlock:
    """Keys and values of a run of tokens, shaped (layers, kv_heads, tokens, head_dim).

    `tokens` are the ids the block encodes, compared on lookup so that a key collision or a foreign file is never
    served; `meta` holds small strings persisted with the block (e.g. the positions the keys were rotated with).
    """

    keys: torch.Tensor
    values: torch.Tensor
    tokens: tuple[int, ...]
    meta: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tokens = _token_tuple(self.tokens)

    @property
    def nbytes(self) -> int:
        return self.keys.numel() * self.keys.element_size() + self.values.numel() * self.values.element_size()


def _layout_problem(
    keys: torch.Tensor, values: torch.Tensor, n_tokens: int, layout: tuple[int, int, int] | None
) -> str | None:
    """Why these tensors cannot be a block of `n_tokens` tokens (None when they can)."""
    if keys.dim() != 4 or values.dim() != 4:
        return f"keys {tuple(keys.shape)} / values {tuple(values.shape)} are not (layers, kv_heads, tokens, head_dim)"
    if keys.shape[:3] != values.shape[:3]:
        return f"values {tuple(values.shape)} do not match keys {tuple(keys.shape)}"
    if n_tokens == 0 or keys.shape[2] != n_tokens:
        return f"{keys.shape[2]} positions for {n_tokens} token ids"
    if layout is not None:
        layers, heads, head_dim = layout
        if (keys.shape[0], keys.shape[1], keys.shape[3], values.shape[3]) != (layers, heads, head_dim, head_dim):
            return f"shape {tuple(keys.shape)} does not fit the layout (layers, kv_heads, head_dim) {layout}"
    return None


def _meta_json(meta: dict[str, str]) -> str:
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise ValueError(f"block meta must map strings to strings, got {meta!r}")
    return json.dumps(meta, sort_keys=True, separators=(",", ":"))


# ----------------------------------------------------------------------------------------------------------- files


class _BadBlockFile(Exception):
    """A block file that must not be served (damaged, foreign or of another layout)."""


def _raw_bytes(tensor: torch.Tensor):
    """The tensor's bytes without a copy (a numpy view; any dtype, bf16 included)."""
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy()


def _checksum(keys: torch.Tensor, values: torch.Tensor, tokens: torch.Tensor, meta_json: str) -> str:
    """CRC-32 over dtype, shapes, meta and all tensor bytes.

    The threat is accidental damage (a torn write, a bad sector), not an adversary who can write the cache folder
    anyway, so a CRC is enough, and it matters for load time: zlib's CRC-32 runs at several times blake2b's speed.
    """
    header = f"{FORMAT_VERSION}|{keys.dtype}|{tuple(keys.shape)}|{tuple(values.shape)}|{meta_json}"
    crc = zlib.crc32(header.encode())
    for tensor in (keys, values, tokens):
        crc = zlib.crc32(_raw_bytes(tensor), crc)
    return f"crc32:{crc:08x}"


def _file_metadata(
    namespace: str, key: str, keys: torch.Tensor, values: torch.Tensor, tokens: torch.Tensor, meta_json: str
) -> dict[str, str]:
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "namespace": namespace,
        "key": key,
        "meta": meta_json,
        "checksum": _checksum(keys, values, tokens, meta_json),
    }


def _read_block_file(
    path: Path, namespace: str, key: str, dtype: torch.dtype, layout: tuple[int, int, int] | None
) -> KVBlock:
    """Load and verify one block file; raises _BadBlockFile (or safetensors' error) for anything not servable."""
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        header = handle.metadata() or {}
        if set(handle.keys()) != set(_TENSOR_NAMES):
            raise _BadBlockFile(f"tensors {sorted(handle.keys())}, expected {sorted(_TENSOR_NAMES)}")
        keys, values, tokens = (handle.get_tensor(name) for name in _TENSOR_NAMES)
    expected = {"format": FORMAT, "version": FORMAT_VERSION, "namespace": namespace, "key": key}
    for name, want in expected.items():
        if header.get(name) != want:
            raise _BadBlockFile(f"{name} is {header.get(name)!r}, expected {want!r}")
    if keys.dtype != dtype or values.dtype != dtype:
        raise _BadBlockFile(f"dtype {keys.dtype}/{values.dtype}, expected {dtype}")
    if tokens.dtype != torch.int64 or tokens.dim() != 1:
        raise _BadBlockFile(f"token ids are {tokens.dtype} {tuple(tokens.shape)}, expected 1-D int64")
    problem = _layout_problem(keys, values, tokens.numel(), layout)
    if problem:
        raise _BadBlockFile(problem)
    meta_json = header.get("meta", "")
    if header.get("checksum") != _checksum(keys, values, tokens, meta_json):
        raise _BadBlockFile("checksum mismatch")
    return KVBlock(keys, values, tuple(tokens.tolist()), json.loads(meta_json))


def _writer_running(pid: int) -> bool:
    """Whether the process named in a temporary file may still be writing it. Our own process is not: the store
    writes synchronously, and in containers a killed earlier run often had the same pid."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


# ----------------------------------------------------------------------------------------------------------- tiers


class _MemoryTier:
    """Blocks held in memory in LRU order (oldest first) under a byte capacity."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.blocks: OrderedDict[str, KVBlock] = OrderedDict()
        self.used = 0

    def fits(self, nbytes: int) -> bool:
        return nbytes <= self.capacity and self.capacity > 0

    def add(self, key: str, block: KVBlock) -> list[tuple[str, KVBlock]]:
        """Insert as most recently used; return the blocks pushed out, oldest first."""
        self.remove(key)
        self.blocks[key] = block
        self.used += block.nbytes
        evicted = []
        while self.used > self.capacity:
            old_key, old = self.blocks.popitem(last=False)
            self.used -= old.nbytes
            evicted.append((old_key, old))
        return evicted

    def touch(self, key: str) -> None:
        self.blocks.move_to_end(key)

    def remove(self, key: str) -> KVBlock | None:
        block = self.blocks.pop(key, None)
        if block is not None:
            self.used -= block.nbytes
        return block

    def clear(self) -> None:
        self.blocks.clear()
        self.used = 0


class _DiskTier:
    """Block files in one folder, in LRU order (oldest first) under a byte capacity."""

    def __init__(self, folder: Path, capacity: int) -> None:
        self.folder = folder
        self.capacity = capacity
        self.files: OrderedDict[str, int] = OrderedDict()  # key -> file size
        self.used = 0
        self._serial = 0
        folder.mkdir(parents=True, exist_ok=True)
        self._remove_leftover_temps()
        self._index_existing()

    def path(self, key: str) -> Path:
        return self.folder / f"{key}{_SUFFIX}"

    def _remove_leftover_temps(self) -> None:
        now = time.time()
        for path in self.folder.iterdir():
            match = _TEMP_PATTERN.fullmatch(path.name)
            if match is None:
                continue
            try:
                age = now - path.stat().st_mtime
            except FileNotFoundError:
                continue
            if age > _STALE_TEMP_SECONDS or not _writer_running(int(match["pid"])):
                path.unlink(missing_ok=True)

    def _index_existing(self) -> None:
        found = []
        for path in self.folder.iterdir():
            key = path.name[: -len(_SUFFIX)]
            if not path.name.endswith(_SUFFIX) or not _KEY_PATTERN.fullmatch(key):
                continue
            try:
                status = path.stat()
            except FileNotFoundError:
                continue
            found.append((status.st_mtime_ns, key, status.st_size))
        for _, key, size in sorted(found):
            self.files[key] = size
            self.used += size

    def write(self, key: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> int:
        """Write a block file atomically (temporary file in the same folder, then rename); return its size."""
        self._serial += 1
        temporary = self.folder / f".{key}.{os.getpid()}.{self._serial}.tmp"
        try:
            save_file(tensors, str(temporary), metadata=metadata)
            os.replace(temporary, self.path(key))
        finally:
            temporary.unlink(missing_ok=True)
        return self.path(key).stat().st_size

    def add(self, key: str, size: int) -> int:
        """Index a written file as most recently used; delete LRU files over capacity and return how many."""
        self.forget(key)
        self.files[key] = size
        self.used += size
        return self.trim()

    def trim(self) -> int:
        evicted = 0
        while self.used > self.capacity and self.files:
            self.remove(next(iter(self.files)))
            evicted += 1
        return evicted

    def touch(self, key: str) -> None:
        """Most recently used, here and for the next run (which orders by modification time)."""
        self.files.move_to_end(key)
        with contextlib.suppress(OSError):
            os.utime(self.path(key))

    def forget(self, key: str) -> None:
        size = self.files.pop(key, None)
        if size is not None:
            self.used -= size

    def remove(self, key: str) -> None:
        self.forget(key)
        self.path(key).unlink(missing_ok=True)

    def clear(self) -> None:
        for path in self.folder.glob(f"*{_SUFFIX}"):
            path.unlink(missing_ok=True)
        self.files.clear()
        self.used = 0


# ----------------------------------------------------------------------------------------------------------- store


@dataclass
class StoreStats:
    """Counters since the store was made or cleared; `bytes_used` is taken when `TieredKVStore.stats` is read."""

    hits: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TIERS, 0))
    misses: int = 0
    corrupt: int = 0  # disk files that failed verification, deleted
    write_failures: int = 0  # disk writes that failed (disk full, folder gone); those blocks stayed in memory
    evictions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TIERS, 0))
    bytes_used: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TIERS, 0))


class TieredKVStore:
    """KV blocks by key in device, cpu and disk tiers (see the module docstring for how blocks move)."""

    def __init__(
        self,
        namespace: str,
        device: torch.device,
        dtype: torch.dtype,
        device_bytes: int,
        cpu_bytes: int,
        disk_dir: Path | None,
        disk_bytes: int,
        *,
        layout: tuple[int, int, int] | None = None,
    ) -> None:
        """`layout` = (layers, kv_heads, head_dim), when given, is enforced on every put and every file loaded.
        The disk tier is off when `disk_dir` is None or `disk_bytes` is 0."""
        if not _NAMESPACE_PATTERN.fullmatch(namespace) or namespace in (".", ".."):
            raise ValueError(f"namespace must be one path component of [0-9A-Za-z_.+=@-], got {namespace!r}")
        if min(device_bytes, cpu_bytes, disk_bytes) < 0:
            raise ValueError("tier capacities must be >= 0 bytes")
        self.namespace = namespace
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:  # tensors report cuda:N, never bare cuda
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.dtype = dtype
        self.layout = tuple(layout) if layout is not None else None
        self._pinned = self.device.type == "cuda"
        self._device = _MemoryTier(device_bytes)
        self._cpu = _MemoryTier(cpu_bytes)
        use_disk = disk_dir is not None and disk_bytes > 0
        self._disk = _DiskTier(Path(disk_dir) / namespace, disk_bytes) if use_disk else None
        self._stats = StoreStats()
        if self._disk is not None:
            self._stats.evictions["disk"] += self._disk.trim()  # the capacity may be smaller than last run's

    # --------------------------------------------------------------------------------------------- public API

    def put(self, key: str, block: KVBlock) -> str | None:
        """Store a copy of `block` under `key`, replacing any earlier block there.

        It goes to the device tier (cpu when the device tier is off or too small) and, with the disk tier on, is
        written through to disk. Returns the tier that holds it in memory, "disk" when only disk could, None when no
        tier could hold it.
        """
        _check_key(key)
        problem = _layout_problem(block.keys, block.values, len(block.tokens), self.layout)
        if problem:
            raise ValueError(f"block {key}: {problem}")
        meta_json = _meta_json(block.meta)
        nbytes = (block.keys.numel() + block.values.numel()) * self.dtype.itemsize
        self._device.remove(key)
        self._cpu.remove(key)

        tier = "device" if self._device.fits(nbytes) else "cpu" if self._cpu.fits(nbytes) else None
        stored = None
        if tier == "device":
            stored = self._copy(block, self.device)
        elif tier == "cpu":
            stored = self._copy(block, torch.device("cpu"), pin=self._pinned)
        on_disk = False
        if self._disk is not None:
            host = stored if stored is not None and stored.keys.device.type == "cpu" else None
            on_disk = self._write_through(key, block, host, meta_json, nbytes)
        if tier == "device":
            self._insert_device(key, stored)
        elif tier == "cpu":
            self._insert_cpu(key, stored)
        return tier or ("disk" if on_disk else None)

    def get(self, key: str, expect_tokens: Sequence[int] | None = None) -> tuple[KVBlock, str] | None:
        """The block under `key` on the store's device and the tier it was found in, or None on a miss.

        Looks in device, then cpu, then disk; a cpu or disk hit is promoted to the device tier. A block whose
        tokens differ from `expect_tokens` (when given) is a miss. The block shares storage with the store.
        """
        expected = None if expect_tokens is None else _token_tuple(expect_tokens)
        found = self._find(key)
        if found is None or (expected is not None and found[0].tokens != expected):
            self._stats.misses += 1
            return None
        block, tier = found
        self._stats.hits[tier] += 1
        if tier == "device":
            self._device.touch(key)
            return block, tier
        return self._promote(key, block, tier), tier

    def contains(self, key: str) -> str | None:
        """The tier that holds `key` (disk: by the index of files), without loading or promoting it."""
        if key in self._device.blocks:
            return "device"
        if key in self._cpu.blocks:
            return "cpu"
        if self._disk is not None and key in self._disk.files:
            return "disk"
        return None

    def disk_path(self, key: str) -> Path | None:
        """The file a block is (or would be) stored in; None without a disk tier."""
        return None if self._disk is None else self._disk.path(key)

    @property
    def stats(self) -> StoreStats:
        """A snapshot of the counters, with the bytes each tier holds now."""
        used = {"device": self._device.used, "cpu": self._cpu.used, "disk": self._disk.used if self._disk else 0}
        return dataclasses.replace(
            self._stats, hits=dict(self._stats.hits), evictions=dict(self._stats.evictions), bytes_used=used
        )

    def clear(self) -> None:
        """Forget every block in every tier (this namespace's files included) and reset the counters."""
        self._device.clear()
        self._cpu.clear()
        if self._disk is not None:
            self._disk.clear()
        self._stats = StoreStats()

    # ------------------------------------------------------------------------------------------------ helpers

    def _copy(self, block: KVBlock, device: torch.device, pin: bool = False) -> KVBlock:
        """The store's own contiguous copy of a block on `device` in the store's dtype (pinned host memory if asked)."""

        def copy(tensor: torch.Tensor) -> torch.Tensor:
            tensor = tensor.detach()
            if pin:
                pinned = torch.empty(tensor.shape, dtype=self.dtype, pin_memory=True)
                return pinned.copy_(tensor)
            return tensor.to(device=device, dtype=self.dtype, memory_format=torch.contiguous_format, copy=True)

        return KVBlock(copy(block.keys), copy(block.values), block.tokens, dict(block.meta))

    def _to_device(self, block: KVBlock) -> KVBlock:
        """The block on the store's device; no copy when it is there already (pinned sources copy asynchronously,
        ordered on the current stream before any kernel that reads the result)."""
        if block.keys.device == self.device:
            return block
        keys = block.keys.to(self.device, non_blocking=True)
        values = block.values.to(self.device, non_blocking=True)
        return KVBlock(keys, values, block.tokens, block.meta)

    def _to_host(self, block: KVBlock) -> KVBlock:
        """The block in host memory for the cpu tier: itself on a CPU run, a pinned copy when the device is CUDA."""
        if block.keys.device.type == "cpu" and (not self._pinned or block.keys.is_pinned()):
            return block
        return self._copy(block, torch.device("cpu"), pin=self._pinned)

    def _insert_device(self, key: str, block: KVBlock) -> None:
        for old_key, old in self._device.add(key, block):
            self._stats.evictions["device"] += 1
            if self._cpu.fits(old.nbytes):
                self._insert_cpu(old_key, self._to_host(old))

    def _insert_cpu(self, key: str, block: KVBlock) -> None:
        self._stats.evictions["cpu"] += len(self._cpu.add(key, block))

    def _write_through(self, key: str, block: KVBlock, host: KVBlock | None, meta_json: str, nbytes: int) -> bool:
        """Write the block's file (from `host` when a host copy exists already); False when it cannot fit."""
        disk = self._disk
        if nbytes > disk.capacity:
            disk.remove(key)  # an older block under this key must not outlive the new one
            return False
        if host is None:
            host = self._copy(block, torch.device("cpu"))
        tokens = torch.tensor(host.tokens, dtype=torch.int64)
        tensors = {"keys": host.keys, "values": host.values, "tokens": tokens}
        metadata = _file_metadata(self.namespace, key, host.keys, host.values, tokens, meta_json)
        try:
            size = disk.write(key, tensors, metadata)
            if size > disk.capacity:
                disk.remove(key)
                return False
            self._stats.evictions["disk"] += disk.add(key, size)
        except Exception as exc:
            # disk full (safetensors raises SafetensorError, not OSError), folder gone, read-only: whatever the
            # writer raises, the block stays in memory and the run goes on
            with contextlib.suppress(OSError):
                disk.remove(key)  # no stale or half-indexed block under this key
            self._stats.write_failures += 1
            if self._stats.write_failures == 1:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{type(exc).__name__}: {exc}"
                print(
                    f"warning: KV store: cannot write to {disk.folder} ({reason.splitlines()[0]}); "
                    "blocks stay in memory only",
                    file=sys.stderr,
                )
            return False
        return True

    def _find(self, key: str) -> tuple[KVBlock, str] | None:
        block = self._device.blocks.get(key)
        if block is not None:
            return block, "device"
        block = self._cpu.blocks.get(key)
        if block is not None:
            return block, "cpu"
        if self._disk is not None and key in self._disk.files:
            block = self._load(key)
            if block is not None:
                return block, "disk"
        return None

    def _load(self, key: str) -> KVBlock | None:
        """Read and verify a block file; a file that fails verification is deleted and counted, never served."""
        disk = self._disk
        try:
            block = _read_block_file(disk.path(key), self.namespace, key, self.dtype, self.layout)
        except FileNotFoundError:  # removed behind our back (another run sharing the folder)
            disk.forget(key)
            return None
        except (_BadBlockFile, SafetensorError, OSError, ValueError, RuntimeError):
            disk.remove(key)
            self._stats.corrupt += 1
            return None
        disk.touch(key)
        return block

    def _promote(self, key: str, block: KVBlock, tier: str) -> KVBlock:
        """Move a cpu or disk hit into the device tier, or keep it in cpu when the device tier cannot hold it;
        return it on the device."""
        if self._device.fits(block.nbytes):
            if tier == "cpu":
                self._cpu.remove(key)
            on_device = self._to_device(block)
            self._insert_device(key, on_device)
            return on_device
        if tier == "cpu":
            self._cpu.touch(key)
        elif self._cpu.fits(block.nbytes):
            self._insert_cpu(key, self._to_host(block))
        return self._to_device(block)
