"""Request TTFT of the reuse methods against full prefill on a random-weight model of a real shape (GPU figure).

The context is a prompt start plus `--chunk-tokens` chunks (random token ids: random weights give true time, not
quality) and a short question. Chunks are stored ahead (untimed, as CacheBlend and KVLink assume); then each
method serves the context and the question, timed from the first token fed to the first token out, with the
device synchronised, one untimed warm-up and the median of `--repeats`. All methods run side by side in one
process on one model, so the ratios to full compare like with like. It also checks on this device that CacheBlend
with every reused token recomputed gives full prefill's logits.

    python3 benchmarks/reuse_ttft.py --model random:llama-3.1-8b --device cuda --contexts 8192 16384
    .venv/bin/python benchmarks/reuse_ttft.py --model random:smollm2-135m --contexts 1024   # a CPU smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any

import torch

METHODS: list[tuple[str, list[str]]] = [
    ("full", []),
    ("prefix", ["block_tokens=64"]),
    ("naive-concat", []),
    ("kvlink", []),
    ("cacheblend", ["recompute_ratio=0.05"]),
    ("cacheblend", ["recompute_ratio=0.15"]),
    ("cacheblend", ["recompute_ratio=0.3"]),
    ("cacheblend", ["recompute_ratio=0.15", "device_mb=0"]),  # served from the CPU tier: the load is timed
]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:llama-3.1-8b")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--contexts", nargs="+", type=int, default=[8192, 16384])
    parser.add_argument("--chunk-tokens", type=int, default=512)
    parser.add_argument("--head-tokens", type=int, default=32)
    parser.add_argument("--query-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args(argv)


def chunked_context(length: int, chunk: int, head: int, vocab: int, seed: int) -> tuple[list[int], tuple[Any, ...]]:
    """Random ids: a prompt start of `head` tokens, then chunks of `chunk` tokens up to `length`."""
    from cachebench.engine.session import Segment

    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(100, vocab, (length,), generator=generator).tolist()
    segments = [Segment(0, head, False)]
    segments += [Segment(s, min(s + chunk, length), True) for s in range(head, length, chunk)]
    return ids, tuple(segments)


def time_request(
    model: Any, method: Any, ids: list[int], segments: tuple, query: list[int]
) -> tuple[float, torch.Tensor, Any]:
    from cachebench.engine.measure import Clock
    from cachebench.engine.session import KVSession

    clock = Clock(model.device)
    session = KVSession(model, method, None, segments=segments)
    with torch.inference_mode():
        method.stage(session, ids)
        start = clock.now_ms()
        session.prefill(ids, "context")
        logits = session.prefill(query, "query")
        int(logits.argmax())
        elapsed = clock.now_ms() - start
    return elapsed, logits.float(), session


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    from cachebench.models.loading import load_model
    from cachebench.provenance import hardware
    from cachebench.registry import build_method

    model = load_model(args.model, args.dtype, args.device, "sdpa")
    vocab = min(model.config.vocab_size, len(model.tokenizer))
    print(
        f"model {model.name} ({model.dtype_name}) on {hardware(model.device)}; chunks of {args.chunk_tokens} "
        f"tokens after a {args.head_tokens}-token prompt start, {args.query_tokens}-token question, median of "
        f"{args.repeats}\n"
    )
    print("| context | method | request TTFT ms | TTFT / full | reused | recomputed | tier |")
    print("|---|---|---|---|---|---|---|")
    query = list(range(200, 200 + args.query_tokens))
    for length in args.contexts:
        ids, segments = chunked_context(length, args.chunk_tokens, args.head_tokens, vocab, seed=length)
        times: dict[str, float] = {}
        reference = None
        for name, params in METHODS:
            sized = [*params, "device_mb=16384"] if name != "full" and "device_mb=0" not in params else params
            method = build_method(name, sized)
            method.attach(model)
            time_request(model, method, ids, segments, query)  # warm-up; also fills prefix's store
            runs = [time_request(model, method, ids, segments, query) for _ in range(args.repeats)]
            elapsed = statistics.median(run[0] for run in runs)
            session = runs[-1][2]
            label = " ".join([name, *(p for p in params if not p.startswith("block"))])
            times[label] = elapsed
            if name == "full":
                reference = runs[-1][1]
            tiers = ", ".join(f"{t}" for t, n in session.reuse.tier_tokens.items() if n) or "-"
            print(
                f"| {length} | {label} | {elapsed:,.1f} | {elapsed / times['full']:.2f}x | "
                f"{session.reuse.reused_tokens} | {session.reuse.recomputed_tokens} | {tiers} |",
                flush=True,
            )
            del method, runs, session
            if model.device.type == "cuda":
                torch.cuda.empty_cache()
        check = build_method("cacheblend", ["recompute_ratio=1.0", "device_mb=16384"])
        check.attach(model)
        _, logits, _ = time_request(model, check, ids, segments, query)
        print(
            f"| {length} | cacheblend 1.0 vs full: max |logit diff| {(logits - reference).abs().max():.3g}, "
            f"same top token {bool(logits.argmax() == reference.argmax())} | | | | | |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
