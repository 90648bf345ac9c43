"""What `cachebench perf` measures for one (method, context length): prefill time and its FLOP floor, decode time
per token (eager, and over static buffers replayed as a CUDA graph on a GPU) and its bandwidth floor, KV bytes,
peak memory, and decode throughput at a batch size (given, or the largest that fits a memory budget).

Token ids are random (time and memory do not depend on them); the prefill goes through the method exactly as
`cachebench eval` feeds a context, so eviction methods compress with their own hooks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cachebench.engine.session import KVSession, LayerHooks
from cachebench.engine.static_decode import CapturedStep, StaticDecoder, bucketed
from cachebench.method import KVMethod
from cachebench.models.loaded import LoadedModel
from cachebench.perf.floors import Floors, prefill_flops
from cachebench.perf.timing import median_ms


@dataclass(frozen=True)
class PerfSettings:
    contexts: tuple[int, ...]
    batch_size: int = 1
    memory_budget_bytes: int | None = None  # pick the largest batch whose weights + KV + activations fit
    repeats: int = 3
    decode_steps: int = 32
    bucket: int = 1024


@dataclass
class PerfRow:
    method: str
    context: int
    batch: int
    kv_bytes: int  # one sequence's cache after the method acted
    peak_mem_bytes: int  # CUDA max allocated over prefill and decode (weights included); 0 on CPU
    prefill_ms: float
    prefill_floor_ms: float
    eager_decode_ms: float  # batch 1, transformers' own forward per token
    static_decode_ms: float  # per step at `batch`, static buffers (a CUDA graph replay on a GPU)
    decode_floor_ms: float  # weights + live KV of the batch read once, at the measured bandwidth
    graph: bool  # whether static_decode_ms is a CUDA-graph replay

    @property
    def tokens_per_s(self) -> float:
        return self.batch / (self.static_decode_ms / 1000.0)


def weight_bytes(model: LoadedModel) -> int:
    return sum(p.numel() * p.element_size() for p in model.model.parameters())


def _prefilled(model: LoadedModel, method: KVMethod, hooks: LayerHooks | None, ids: list[int]) -> KVSession:
    session = KVSession(model, method, hooks if method.uses_layer_hook else None)
    method.stage(session, ids)
    session.prefill(ids, "context")
    return session


def _buffer_bytes(cache: object, capacity: int) -> int:
    """One sequence's static K and V buffers of `capacity` entries in every layer."""
    return sum(2 * layer.keys.shape[1] * layer.keys.shape[-1] * capacity * layer.keys.element_size()
               for layer in cache.layers)


def _step_activation_bytes(model: LoadedModel) -> int:
    """One sequence's largest live intermediates in a decode step: the MLP's gate, up and product, and the
    logits (an upper bound; a step's hidden states are much smaller)."""
    config = model.config
    return (3 * config.intermediate_size + config.vocab_size) * model.dtype.itemsize


def _batch_for_budget(model: LoadedModel, capacity_bytes: int, budget: int, step_overhead: int) -> int:
    """The largest batch whose weights, static buffers and one step's activations fit `budget`."""
    room = budget - weight_bytes(model)
    return max(0, room // max(1, capacity_bytes + step_overhead))


def measure(model: LoadedModel, method: KVMethod, context: int, settings: PerfSettings, floors: Floors,
            hooks: LayerHooks | None) -> PerfRow:
    """Prefill (median of repeats), eager decode at batch 1, static decode at the batch, with floors."""
    device = model.device
    cuda = device.type == "cuda"
    generator = torch.Generator().manual_seed(context)
    ids = torch.randint(100, model.tokenizer.vocab_size, (context,), generator=generator).tolist()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        prefill_ms = median_ms(lambda: _prefilled(model, method, hooks, ids), device, settings.repeats)
        session = _prefilled(model, method, hooks, ids)
        kv = method.kv_bytes(session.cache)
        live = max(layer.keys.shape[-2] for layer in session.cache.layers)
        capacity = bucketed(live + settings.decode_steps + 8, settings.bucket)  # timed steps, warm-ups, capture
        snapshot = session.snapshot()
        token = [int(ids[-1])]
        eager_ms = median_ms(lambda: session.forward(token, "decode"), device, settings.decode_steps)
        session.restore(snapshot)

        batch = settings.batch_size
        if settings.memory_budget_bytes is not None:
            batch = _batch_for_budget(model, _buffer_bytes(session.cache, capacity), settings.memory_budget_bytes,
                                      _step_activation_bytes(model))
            if batch == 0:
                raise ValueError(f"{method.name} at {context} tokens: not even one sequence fits the memory budget")
        decoder = StaticDecoder(model, capacity, batch)
        decoder.load(session.cache, session.position)
        decoder.token.fill_(token[0])
        step = CapturedStep(decoder).replay if cuda else decoder.step
        static_ms = median_ms(step, device, settings.decode_steps, warmup=3)
    peak = int(torch.cuda.max_memory_allocated(device)) if cuda else 0
    decode_floor = floors.read_ms(weight_bytes(model) + batch * kv)
    return PerfRow(method=method.name, context=context, batch=batch, kv_bytes=kv, peak_mem_bytes=peak,
                   prefill_ms=prefill_ms, prefill_floor_ms=floors.compute_ms(prefill_flops(model.config, context)),
                   eager_decode_ms=eager_ms, static_decode_ms=static_ms, decode_floor_ms=decode_floor, graph=cuda)
