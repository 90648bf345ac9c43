"""What `cachebench perf` measures for one (method, context length): prefill time and its FLOP floor, decode time
per token (eager, and over static buffers replayed as a CUDA graph on a GPU) and its bandwidth floor, KV bytes,
peak memory, and decode throughput at a batch size (given, or the largest that fits a memory budget).

A timed repeat is one request as `cachebench eval` serves a context: the prefill through the method (eviction
methods compress with their own hooks), the first token, then `decode_steps` eager steps. Each repeat is kept, so
result rows can put an interval on the times. Token ids are random: time and memory do not depend on them.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import statistics
from dataclasses import dataclass, field

import torch

from cachebench.engine.measure import PeakMemory
from cachebench.engine.session import KVSession, LayerHooks
from cachebench.engine.static_decode import CapturedStep, StaticDecoder, bucketed
from cachebench.method import KVMethod
from cachebench.models.anatomy import kv_bytes_per_token
from cachebench.models.loaded import LoadedModel
from cachebench.params import canonical_json
from cachebench.perf.floors import Floors, prefill_flops
from cachebench.perf.timing import median_ms, time_ms

WARMUP_STEPS = 2  # untimed decode steps after the untimed warm-up prefill


@dataclass(frozen=True)
class PerfSettings:
    contexts: tuple[int, ...]
    batch_size: int = 1
    memory_budget_bytes: int | None = None  # pick the largest batch whose weights + KV + activations fit
    repeats: int = 3
    decode_steps: int = 32
    bucket: int = 1024
    seed: int = 0


@dataclass(frozen=True)
class Repeat:
    """One timed request at batch 1: its prefill, its time to first token, and its eager decode."""

    prefill_ms: float
    ttft_ms: float  # the prefill plus the first token's forward
    decode_ms_per_token: float  # mean of the eager steps after the first token


@dataclass
class PerfRow:
    method: str
    params: dict[str, object]
    label: str  # the parameters set away from their defaults, for the table ("ratio=0.75", or "defaults")
    context: int
    batch: int
    kv_bytes: int  # one sequence's cache after the method acted
    peak_kv_bytes: int  # the most the cache held during the prefill (a compressing method's transient)
    # the timed repeats at batch 1: CUDA max allocated (weights included) on a GPU, the growth of the process's
    # peak RSS on a CPU; None where the growth could not be seen (memory the allocator had kept was reused)
    peak_mem_bytes: int | None
    batch_peak_mem_bytes: int | None  # the same over the static decode at `batch`
    prefill_ms: float  # median of the repeats
    prefill_floor_ms: float
    eager_decode_ms: float  # median of the repeats' mean eager step, batch 1
    static_decode_ms: float  # per step at `batch`, static buffers (a CUDA graph replay on a GPU)
    decode_floor_ms: float  # weights + live KV of the batch read once, at the measured bandwidth
    graph: bool  # whether static_decode_ms is a CUDA-graph replay
    repeats: list[Repeat] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        """Decode throughput of the batch over static buffers."""
        return self.batch / (self.static_decode_ms / 1000.0)

    @property
    def ttft_ms(self) -> float:
        return statistics.median(r.ttft_ms for r in self.repeats)


def weight_bytes(model: LoadedModel) -> int:
    return sum(p.numel() * p.element_size() for p in model.model.parameters())


def _prefilled(model: LoadedModel, method: KVMethod, hooks: LayerHooks | None, ids: list[int]) -> KVSession:
    session = KVSession(model, method, hooks if method.uses_layer_hook else None)
    method.stage(session, ids)
    session.prefill(ids, "context")
    return session


def _step_activation_bytes(model: LoadedModel) -> int:
    """One sequence's largest live intermediates in a decode step: the MLP's gate, up and product, and the
    logits (an upper bound; a step's hidden states are much smaller)."""
    config = model.config
    return (3 * config.intermediate_size + config.vocab_size) * model.dtype.itemsize


def _batch_for_budget(model: LoadedModel, capacity_bytes: int, budget: int, step_overhead: int) -> int:
    """The largest batch whose weights, static buffers and one step's activations fit `budget`."""
    room = budget - weight_bytes(model)
    return max(0, room // max(1, capacity_bytes + step_overhead))


def _give_back_host_memory(device: torch.device) -> None:
    """On a CPU, return the heap's free pages to the system (glibc malloc_trim), so that the next interval's
    allocations raise the peak RSS instead of silently reusing memory an earlier cell kept."""
    if device.type == "cuda":
        return
    name = ctypes.util.find_library("c")
    if name is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(name).malloc_trim(0)


class _Peak:
    """PeakMemory over an interval, None where it saw no growth (a CPU reusing memory it had kept)."""

    def __init__(self, device: torch.device) -> None:
        _give_back_host_memory(device)
        self._peak = PeakMemory(device)
        self._peak.start()

    def bytes(self) -> int | None:
        value = self._peak.peak_bytes()
        return value if value > 0 else None


def _timed_repeat(model: LoadedModel, method: KVMethod, hooks: LayerHooks | None, ids: list[int],
                  steps: int) -> tuple[Repeat, KVSession, int]:
    """One request: the prefill, the first token, `steps` eager decode steps; the session it left and the cache's
    bytes right after the prefill."""
    device = model.device
    holder: list[KVSession] = []
    prefill = time_ms(lambda: holder.append(_prefilled(model, method, hooks, ids)), device)
    session = holder[0]
    kv = method.kv_bytes(session.cache)
    token = [int(ids[-1])]
    first = time_ms(lambda: session.forward(token, "decode"), device)
    decode = [time_ms(lambda: session.forward(token, "decode"), device) for _ in range(steps)]
    return Repeat(prefill, prefill + first, statistics.fmean(decode)), session, kv


def measure(model: LoadedModel, method: KVMethod, context: int, settings: PerfSettings, floors: Floors,
            hooks: LayerHooks | None) -> PerfRow:
    """An untimed warm-up request, the timed repeats at batch 1, then static decode at the batch."""
    device = model.device
    cuda = device.type == "cuda"
    generator = torch.Generator().manual_seed(settings.seed)
    ids = torch.randint(100, model.tokenizer.vocab_size, (context,), generator=generator).tolist()
    with torch.inference_mode():
        warm = _prefilled(model, method, hooks, ids)
        for _ in range(WARMUP_STEPS):
            warm.forward([int(ids[-1])], "decode")
        del warm
        peak = _Peak(device)
        repeat, session, kv = _timed_repeat(model, method, hooks, ids, settings.decode_steps)
        repeats = [repeat]
        for _ in range(settings.repeats - 1):
            del session  # the previous request's cache is freed before the next one is built
            repeat, session, kv = _timed_repeat(model, method, hooks, ids, settings.decode_steps)
            repeats.append(repeat)
        peak_bytes = peak.bytes()
        peak_kv = session.peak_kv_bytes

        # static decode continues the last request's cache (the method's decode keeps its shape)
        live = max(layer.keys.shape[-2] for layer in session.cache.layers)
        capacity = bucketed(live + settings.decode_steps + 8, settings.bucket)  # timed steps, warm-ups, capture
        batch = settings.batch_size
        if settings.memory_budget_bytes is not None:
            buffers = capacity * kv_bytes_per_token(model.config, model.dtype)  # one sequence's static K, V
            batch = _batch_for_budget(model, buffers, settings.memory_budget_bytes, _step_activation_bytes(model))
            if batch == 0:
                raise ValueError(f"{method.name} at {context} tokens: not even one sequence fits the memory budget")
        batch_peak = _Peak(device)
        decoder = StaticDecoder(model, capacity, batch)
        decoder.load(session.cache, session.position)
        decoder.token.fill_(int(ids[-1]))
        del session
        step = CapturedStep(decoder).replay if cuda else decoder.step
        static_ms = median_ms(step, device, settings.decode_steps, warmup=3)
        batch_peak_bytes = batch_peak.bytes()
    return PerfRow(
        method=method.name, params=_params(method), label=_label(method), context=context, batch=batch, kv_bytes=kv,
        peak_kv_bytes=peak_kv, peak_mem_bytes=peak_bytes, batch_peak_mem_bytes=batch_peak_bytes,
        prefill_ms=statistics.median(r.prefill_ms for r in repeats),
        prefill_floor_ms=floors.compute_ms(prefill_flops(model.config, context)),
        eager_decode_ms=statistics.median(r.decode_ms_per_token for r in repeats), static_decode_ms=static_ms,
        decode_floor_ms=floors.read_ms(weight_bytes(model) + batch * kv), graph=cuda, repeats=repeats,
    )


def _label(method: KVMethod) -> str:
    """The parameters that differ from the method's defaults, as name=value."""
    defaults = _plain(type(method.params)())
    changed = [f"{name}={value}" for name, value in _params(method).items() if defaults.get(name) != value]
    return ", ".join(changed) or "defaults"


def _plain(params: object) -> dict[str, object]:
    return json.loads(canonical_json(params))


def _params(method: KVMethod) -> dict[str, object]:
    """The method's parameters as plain values (what `method_params` records as JSON)."""
    return _plain(method.params)
