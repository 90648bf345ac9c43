"""Added prefill time and decode time per token of each KV-compression method over `full`, side by side.

The quality sweep (kv_eviction.py) times each method in its own run, minutes apart, so machine noise of +-20%
on a shared CPU swamps a 10% overhead. Here every round times `full` and every method back to back on the same
prompt, and the table reports the median over rounds of each method's time divided by `full`'s in that round:

  query-agnostic  the context prefill, which includes the method's compression;
  query-aware     the context prefill plus the first question's prefill, where the compression then happens;
  decode          per generated token after the query-agnostic prefill (`--decode-steps` greedy steps).

    .venv/bin/python benchmarks/kv_overhead.py                   # embedded model, 512-token context, 15 rounds
    .venv/bin/python benchmarks/kv_overhead.py --model random:llama-3.1-8b --device cuda --context-tokens 8192 \
        --rounds 5                                               # the GPU check: an 8B shape at 8k tokens
"""

from __future__ import annotations

import argparse
import statistics
import sys

# label -> (method, parameters): a budgeted method runs at `--ratio`; the others at the setting named in the label
METHODS: dict[str, tuple[str, list[str]]] = {
    **{name: (name, ["ratio={ratio}"]) for name in (
        "streamingllm", "h2o", "snapkv", "pyramidkv", "cake", "windowkv", "tokenselect", "razorattention", "knorm",
        "adakv", "kvmerger", "chelsea")},
    "think": ("think", ["ratio={ratio}", "channel_ratio=0.5"]),
    "think-channels-only": ("think", ["ratio=0", "channel_ratio=0.5"]),
    "kivi-4bit": ("kivi", ["bits=4"]),
    "kivi-2bit": ("kivi", ["bits=2"]),
    "quantized-4bit": ("quantized", ["nbits=4"]),
    "minicache": ("minicache", []),
}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context-tokens", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", default="embedded", help="as for `cachebench eval --model`")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--decode-steps", type=int, default=16)
    args = parser.parse_args(argv)

    import torch

    from cachebench.engine.chat import ChatFormat
    from cachebench.engine.measure import Clock
    from cachebench.engine.runner import RunSettings, prepare_episodes, warm_up
    from cachebench.engine.session import KVSession, LayerHooks
    from cachebench.eval_run import EvalRequest, build_episodes
    from cachebench.models.loading import load_model
    from cachebench.provenance import hardware
    from cachebench.registry import build_method
    from cachebench.taskspec import resolve_tasks

    model = load_model(args.model, args.dtype, args.device, "sdpa")
    spec = resolve_tasks("multiturn.passkey")[0]
    chat = ChatFormat(model.tokenizer)
    request = EvalRequest(method="full", task=spec.name, limit=1, context_tokens=args.context_tokens)
    prepared = prepare_episodes(build_episodes(spec, request, model), spec, model, chat,
                                RunSettings(mode="multi-request"))[0]
    question = model.tokenizer(chat.query(spec.query_joiner + prepared.turn_texts[0]),
                               add_special_tokens=False)["input_ids"]
    methods = {"full": build_method("full", [])}
    for label in args.methods:
        name, settings = METHODS[label]
        methods[label] = build_method(name, [item.format(ratio=args.ratio) for item in settings])
    for method in methods.values():
        method.attach(model)
    clock = Clock(model.device)
    warm_up(model)

    def timed(method, aware: bool) -> tuple[float, float]:
        """(prefill ms, decode ms per token); decode only after the query-agnostic prefill."""
        hooks = LayerHooks(model.model) if method.uses_layer_hook else None
        try:
            with torch.inference_mode():
                session = KVSession(model, method, hooks, query_aware=aware)
                start = clock.now_ms()
                session.prefill(prepared.context_ids, "context")
                if aware:
                    session.prefill(question, "query")
                prefill_ms = clock.now_ms() - start
                if aware or args.decode_steps < 1:
                    return prefill_ms, float("nan")
                logits = session.prefill(question, "query")
                start = clock.now_ms()
                for _ in range(args.decode_steps):
                    logits = session.forward([int(logits.argmax())], "decode")
                return prefill_ms, (clock.now_ms() - start) / args.decode_steps
        finally:
            if hooks is not None:
                hooks.remove()

    ratios: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for aware in (False, True):
            base_prefill, base_decode = timed(methods["full"], aware)
            for name in args.methods:
                prefill_ms, decode_ms = timed(methods[name], aware)
                ratios.setdefault((name, "aware" if aware else "agnostic"), []).append(prefill_ms / base_prefill)
                if not aware and decode_ms == decode_ms:
                    ratios.setdefault((name, "decode"), []).append(decode_ms / base_decode)
    print(f"model {model.name} ({model.dtype_name}) on {hardware(model.device)}; context "
          f"{len(prepared.context_ids)} tokens, question {len(question)} tokens, ratio {args.ratio}, "
          f"{args.rounds} rounds, {args.decode_steps} decode steps\n")
    print("| method | query-agnostic: context prefill vs full | query-aware: context + question vs full | "
          "decode per token vs full |")
    print("|---|---|---|---|")
    for name in args.methods:
        cells = [statistics.median(ratios[(name, kind)]) if ratios.get((name, kind)) else float("nan")
                 for kind in ("agnostic", "aware", "decode")]
        print(f"| {name} | " + " | ".join(f"{c:.2f}x" for c in cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
