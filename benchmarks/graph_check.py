"""Graph decode against eager decode on the GPU: the same greedy tokens from a CUDA-graph replay of the static
step as from the same step run eagerly, and the static step's logits against transformers' own eager forward,
for a full cache and for caches eviction methods shrank (uniform and per-layer budgets).

    python3 benchmarks/graph_check.py --model random:smollm2-135m     # the device script runs this first
"""

from __future__ import annotations

import argparse
import sys

import torch


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:smollm2-135m")
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=32)
    args = parser.parse_args(argv)
    from cachebench.engine.session import KVSession, LayerHooks
    from cachebench.engine.static_decode import CapturedStep, StaticDecoder, bucketed
    from cachebench.models.loading import load_model
    from cachebench.registry import build_method

    model = load_model(args.model, "auto", "cuda")
    hooks = LayerHooks(model.model)
    ids = torch.randint(100, model.tokenizer.vocab_size, (args.context,), generator=torch.Generator().manual_seed(0))
    print("| method | graph tokens = static eager tokens | max |logit diff| static vs transformers eager |")
    print("|---|---|---|")
    failed = False
    for name, params in (("full", []), ("snapkv", ["ratio=0.75"]), ("pyramidkv", ["ratio=0.75"])):
        method = build_method(name, params)
        session = KVSession(model, method, hooks if method.uses_layer_hook else None)
        with torch.inference_mode():
            first = session.prefill(ids.tolist(), "context").argmax()
            capacity = bucketed(max(layer.keys.shape[-2] for layer in session.cache.layers) + args.steps + 8, 256)
            graph, eager = StaticDecoder(model, capacity), StaticDecoder(model, capacity)
            for decoder in (graph, eager):
                decoder.load(session.cache, session.position)
            same = CapturedStep(graph).generate(first, args.steps) == eager.generate(first, args.steps)
            check = StaticDecoder(model, capacity)
            check.load(session.cache, session.position)
            token, worst = int(first), 0.0
            for _ in range(args.steps):
                check.token.fill_(token)
                ours = check.step()[0].float()
                theirs = session.forward([token], "decode").float()
                worst = max(worst, float((ours - theirs).abs().max()))
                token = int(theirs.argmax())
        failed |= not same
        print(f"| {name} | {'yes' if same else 'NO'} | {worst:.3g} |", flush=True)
    hooks.remove()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
