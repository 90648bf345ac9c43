"""The store a reuse method keeps its KV blocks in: its parameters, its namespace, and timed loads.

Every reuse method takes the same store parameters (capacity per tier, disk folder), so `cachebench eval` can
compare methods at equal storage. A store's namespace is a fingerprint of the model's shape, dtype and weights,
so a disk tier shared by several models or runs never serves one model's KV to another.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cachebench.engine.measure import Clock
from cachebench.engine.session import KVSession
from cachebench.errors import UsageError
from cachebench.method import KVMethod
from cachebench.models.anatomy import head_dim
from cachebench.models.loaded import LoadedModel
from cachebench.params import param
from cachebench.paths import cache_dir
from cachebench.reuse.store import KVBlock, TieredKVStore

_MB = 2**20


@dataclass(frozen=True)
class StoreParams:
    device_mb: int = param(2048, "device-memory tier capacity in MiB (0 disables it)", low=0, infrastructure=True)
    cpu_mb: int = param(8192, "CPU-memory tier capacity in MiB (0 disables it)", low=0, infrastructure=True)
    disk_mb: int = param(0, "local-disk tier capacity in MiB (0: off; blocks then do not outlive the run)", low=0,
                         infrastructure=True)
    disk_dir: str = param("", "disk tier folder (default: <cache dir>/kvstore)", infrastructure=True)


def model_namespace(model: LoadedModel, variant: str) -> str:
    """A short fingerprint of the model's identity, shape, dtype and weights, plus how blocks were encoded."""
    config = model.config
    digest = hashlib.blake2b(digest_size=8)
    shape = (
        config.num_hidden_layers,
        config.num_key_value_heads,
        getattr(config, "head_dim", None),
        config.hidden_size,
        config.vocab_size,
    )
    digest.update(f"{model.name}|{model.weights}|{model.dtype_name}|{shape}|{variant}".encode())
    sample = model.model.get_input_embeddings().weight[:4, :16].detach().float().cpu()
    digest.update(sample.numpy().tobytes())  # random weights differ by seed: their KV must not mix
    return f"{variant}-{digest.hexdigest()}"


def open_store(params: StoreParams, model: LoadedModel, variant: str) -> TieredKVStore:
    """A tiered store for this model and encoding variant, sized by the method's parameters."""
    disk_dir = Path(params.disk_dir) if params.disk_dir else cache_dir() / "kvstore"
    config = model.config
    try:
        return TieredKVStore(
            namespace=model_namespace(model, variant),
            device=model.device,
            dtype=model.dtype,
            device_bytes=params.device_mb * _MB,
            cpu_bytes=params.cpu_mb * _MB,
            disk_dir=disk_dir if params.disk_mb > 0 else None,
            disk_bytes=params.disk_mb * _MB,
            layout=(config.num_hidden_layers, config.num_key_value_heads, head_dim(config)),
        )
    except OSError as exc:  # the disk folder cannot be created or listed
        raise UsageError(f"--param disk_dir={disk_dir}: not usable for the KV store ({exc.strerror or exc})") from None


class StoreBackedMethod(KVMethod):
    """A reuse method: it keeps one store for the run (kept across runs of the same model, as a benchmark that
    reuses a method instance expects) and serves every multi-request context from it."""

    reuses_kv = True

    def __init__(self, params: Any) -> None:
        super().__init__(params)
        self.store: TieredKVStore | None = None
        self._store_model: LoadedModel | None = None

    def open_store_for(self, model: LoadedModel, variant: str) -> None:
        if self.store is None or self._store_model is not model:
            self.store = open_store(self.params, model, variant)
            self._store_model = model


def timed_get(store: TieredKVStore, key: str, tokens: Sequence[int], session: KVSession) -> tuple[KVBlock, str] | None:
    """Fetch a block, adding the time it took and, on a hit, its tokens and tier to the session's counters."""
    clock = Clock(session.model.device)
    corrupt = store.stats.corrupt
    start = clock.now_ms()
    found = store.get(key, expect_tokens=tokens)
    session.reuse.load_ms += clock.now_ms() - start
    session.reuse.corrupt_blocks += store.stats.corrupt - corrupt  # a damaged block is a miss, and counted
    if found is not None:
        session.reuse.reused_tokens += len(tokens)
        session.reuse.tier_tokens[found[1]] += len(tokens)
    return found


def stack_layers(tensors: Sequence[torch.Tensor], start: int, end: int) -> torch.Tensor:
    """Tokens [start, end) of per-layer (1, kv_heads, tokens, head_dim) tensors, as one
    (layers, kv_heads, end - start, head_dim) tensor owning its memory."""
    return torch.stack([t[0, :, start:end] for t in tensors]).contiguous()
