"""Orchestration of `cachebench perf`: check the methods, load the model, measure the floors, then every
(method, context) cell, and render a Markdown table with each figure's ratio to its floor."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from cachebench import provenance
from cachebench.errors import UsageError
from cachebench.perf.floors import Floors, measure_floors
from cachebench.perf.measure import PerfRow, PerfSettings, measure
from cachebench.perf.timing import how

__all__ = ["PerfReport", "PerfSettings", "run_perf"]

MIB = 2**20


@dataclass
class PerfReport:
    model: str
    dtype: str
    hardware: str
    timer: str
    floors: Floors
    rows: list[PerfRow]

    def render(self) -> str:
        f = self.floors
        lines = [
            f"{self.model} ({self.dtype}) on {self.hardware}; times: {self.timer}",
            f"floors measured here: {f.bandwidth / 1e9:,.0f} GB/s ({f.copy_bytes / MIB:,.0f} MiB copy), "
            f"{f.flops / 1e12:,.1f} TFLOP/s ({f.matmul_n}^3 {self.dtype} matmul)",
            "",
            "| method | context | batch | KV MiB | peak MiB | prefill ms | / floor | eager decode ms | "
            "static decode ms | / floor | tokens/s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in self.rows:
            static = f"{r.static_decode_ms:.2f}" + (" (graph)" if r.graph else "")
            lines.append(
                f"| {r.method} | {r.context:,} | {r.batch} | {r.kv_bytes / MIB:,.1f} | "
                f"{r.peak_mem_bytes / MIB:,.0f} | {r.prefill_ms:,.1f} | {r.prefill_ms / r.prefill_floor_ms:.2f}x | "
                f"{r.eager_decode_ms:.2f} | {static} | {r.static_decode_ms / r.decode_floor_ms:.2f}x | "
                f"{r.tokens_per_s:,.0f} |"
            )
        return "\n".join(lines)


def run_perf(model_spec: str, methods: list[tuple[str, list[str]]], settings: PerfSettings, dtype: str,
             device: str) -> PerfReport:
    from cachebench.engine.session import LayerHooks
    from cachebench.models.loading import load_model
    from cachebench.registry import build_method, method_track

    built = []
    for name, params in methods:  # every method checked before the model loads
        if method_track(name) != "kv":
            raise UsageError(f"--method {name}: perf measures KV-cache methods")
        method = build_method(name, params)
        if method.reuses_kv or not method.fixed_cache_while_decoding:
            raise UsageError(f"--method {name}: its decode changes the cache every step or it reuses stored "
                             "KV; perf serves methods that shape the cache at prefill")
        built.append(method)
    model = load_model(model_spec, dtype, device)
    if model.device.type != "cuda":
        print("warning: no GPU: running on the CPU, where decode runs without CUDA graphs and times say little "
              "about a GPU; use small shapes (--model random:smollm2-135m --context 512)", file=sys.stderr)
    floors = measure_floors(model.device, model.dtype)
    hooks = LayerHooks(model.model) if any(m.uses_layer_hook for m in built) else None
    rows = []
    try:
        for method in built:
            method.attach(model)
            for context in settings.contexts:
                try:
                    rows.append(measure(model, method, context, settings, floors, hooks))
                except ValueError as exc:
                    raise UsageError(str(exc)) from None
                except torch.OutOfMemoryError:
                    print(f"{method.name} at {context:,} tokens: out of device memory, skipped", file=sys.stderr)
                    torch.cuda.empty_cache()
                    continue
                print(f"{method.name} at {context:,} tokens done", file=sys.stderr, flush=True)
    finally:
        if hooks is not None:
            hooks.remove()
    return PerfReport(model.name, model.dtype_name, provenance.hardware(model.device), how(model.device), floors,
                      rows)
