"""Added prefill time of each KV-compression method over `full`, measured side by side.

The quality sweep (kv_eviction.py) times each method in its own run, minutes apart, so machine noise of +-20%
on a shared CPU swamps a 10% overhead. Here every round times `full` and every method back to back on the same
prompt, and the table reports the median over rounds of each method's time divided by `full`'s in that round:

  query-agnostic  the context prefill, which includes the method's compression;
  query-aware     the context prefill plus the first question's prefill, where the compression then happens.

    .venv/bin/python benchmarks/prefill_overhead.py                   # 512-token context, 15 rounds
    .venv/bin/python benchmarks/prefill_overhead.py --context-tokens 2048 --rounds 9
"""

from __future__ import annotations

import argparse
import statistics
import sys

METHODS = ["streamingllm", "h2o", "snapkv", "pyramidkv", "cake", "windowkv", "tokenselect", "razorattention"]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context-tokens", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    import torch

    from cachebench.engine.chat import ChatFormat
    from cachebench.engine.measure import Clock
    from cachebench.engine.runner import RunSettings, prepare_episodes, warm_up
    from cachebench.engine.session import KVSession, LayerHooks
    from cachebench.evaluate import EvalRequest, build_episodes
    from cachebench.models.loading import load_model
    from cachebench.provenance import hardware
    from cachebench.registry import build_method
    from cachebench.taskspec import resolve_tasks

    model = load_model("embedded", "auto", args.device, "sdpa")
    spec = resolve_tasks("multiturn.passkey")[0]
    chat = ChatFormat(model.tokenizer)
    request = EvalRequest(method="full", task=spec.name, limit=1, context_tokens=args.context_tokens)
    prepared = prepare_episodes(build_episodes(spec, request, model), spec, model, chat,
                                RunSettings(mode="multi-request"))[0]
    question = model.tokenizer(chat.query(spec.query_joiner + prepared.turn_texts[0]),
                               add_special_tokens=False)["input_ids"]
    methods = {"full": build_method("full", [])}
    methods.update({name: build_method(name, [f"ratio={args.ratio}"]) for name in args.methods})
    for method in methods.values():
        method.attach(model)
    clock = Clock(model.device)
    warm_up(model)

    def timed(method, aware: bool) -> float:
        hooks = LayerHooks(model.model) if method.uses_layer_hook else None
        try:
            with torch.inference_mode():
                session = KVSession(model, method, hooks, query_aware=aware)
                start = clock.now_ms()
                session.prefill(prepared.context_ids, "context")
                if aware:
                    session.prefill(question, "query")
                return clock.now_ms() - start
        finally:
            if hooks is not None:
                hooks.remove()

    ratios: dict[tuple[str, bool], list[float]] = {}
    for _ in range(args.rounds):
        for aware in (False, True):
            base = timed(methods["full"], aware)
            for name in args.methods:
                ratios.setdefault((name, aware), []).append(timed(methods[name], aware) / base)
    print(f"model {model.name} ({model.dtype_name}) on {hardware(model.device)}; context "
          f"{len(prepared.context_ids)} tokens, question {len(question)} tokens, ratio {args.ratio}, "
          f"{args.rounds} rounds\n")
    print("| method | query-agnostic: context prefill vs full | query-aware: context + question vs full |")
    print("|---|---|---|")
    for name in args.methods:
        agnostic = statistics.median(ratios[(name, False)])
        aware = statistics.median(ratios[(name, True)])
        print(f"| {name} | {agnostic:.2f}x | {aware:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
