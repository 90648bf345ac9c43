"""Our Knorm, Ada-KV and ThinK against NVIDIA kvpress's presses, on identical token ids and weights.

Both sides prefill the same context (the first multiturn.passkey episode at `--context-tokens`) through the same
converted embedded model in float32 on the CPU, each with its own transformers; the kept token indices (Knorm,
Ada-KV) or kept key channels (ThinK) of every layer and KV head are recovered from the tensors each cache really
holds after compression, and compared:

    kept overlap = |ours ∩ kvpress| / |kvpress| per layer and head (1.0 = the same choice)

kvpress runs in its own virtual environment, with its own transformers pin, so nothing of it is imported here:

    python3 -m venv /tmp/kvpress-venv
    /tmp/kvpress-venv/bin/pip install torch==2.13.0 kvpress==0.5.5     # torch first: the CPU wheel
    .venv/bin/python benchmarks/kvpress_crosscheck.py --kvpress-python /tmp/kvpress-venv/bin/python

The same file is the kvpress side (`--side kvpress`, run by the command above in the other environment); it reads
the token ids and writes what kvpress kept, as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

# name -> (our method and parameters, kvpress press description); ratio and window are filled in from the options
CASES: dict[str, tuple[str, list[str], dict[str, Any]]] = {
    "knorm": ("knorm", ["ratio={ratio}"], {"press": "knorm"}),
    "adakv(knorm)": ("adakv", ["scorer=knorm", "ratio={ratio}"], {"press": "adakv", "inner": "knorm"}),
    "adakv(snapkv)": ("adakv", ["scorer=snapkv", "ratio={ratio}", "window={window}", "kernel={kernel}"],
                      {"press": "adakv", "inner": "snapkv"}),
    "think": ("think", ["ratio=0", "channel_ratio={channels}", "window={window}"], {"press": "think"}),
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", choices=("ours", "kvpress"), default="ours")
    parser.add_argument("--kvpress-python", help="the python of a virtual environment with kvpress installed")
    parser.add_argument("--context-tokens", type=int, default=512)
    parser.add_argument("--ratio", type=float, default=0.5, help="token compression ratio (Knorm, Ada-KV)")
    parser.add_argument("--channels", type=float, default=0.5, help="ThinK's key channel pruning ratio")
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--kernel", type=int, default=7, help="SnapKV's pooling kernel (both sides)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--ids", type=Path, help="kvpress side: the token ids (JSON)")
    parser.add_argument("--model-dir", type=Path, help="kvpress side: the converted model folder")
    parser.add_argument("--out", type=Path, help="kvpress side: where to write what it kept (JSON)")
    return parser.parse_args(argv)


def rows_of(kept: Any, full: Any) -> list[int]:
    """Indices into `full` (L, d) of the rows of `kept` (k, d): each kept row is an exact copy of one full row."""
    matches = (kept.unsqueeze(1) == full.unsqueeze(0)).all(dim=-1)
    if not bool((matches.sum(dim=1) >= 1).all()):
        raise RuntimeError("a kept key is not a copy of any computed key")
    return sorted(int(i) for i in matches.float().argmax(dim=1))


def nonzero_channels(keys: Any) -> list[int]:
    """Channels of (L, d) keys that are not zero for every token: the channels a pruning kept."""
    return [int(c) for c in (keys != 0).any(dim=0).nonzero().flatten()]


# --- the kvpress side (run inside kvpress's environment) ------------------------------------------------------------

def kvpress_side(args: argparse.Namespace) -> int:
    import torch
    from kvpress import AdaKVPress, KnormPress, SnapKVPress, ThinKPress
    from transformers import AutoModelForCausalLM, DynamicCache

    ids = torch.tensor([json.loads(args.ids.read_text())])
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, torch_dtype=torch.float32, attn_implementation="sdpa")
    model.eval()
    with torch.inference_mode():
        full = DynamicCache()
        model(ids, past_key_values=full)
    result: dict[str, list[list[list[int]]]] = {}
    for case in args.cases:
        spec = CASES[case][2]
        if spec["press"] == "think":
            press = ThinKPress(key_channel_compression_ratio=args.channels, window_size=args.window)
        else:
            inner = (KnormPress(compression_ratio=args.ratio) if spec.get("inner", spec["press"]) == "knorm" else
                     SnapKVPress(compression_ratio=args.ratio, window_size=args.window, kernel_size=args.kernel))
            press = AdaKVPress(press=inner) if spec["press"] == "adakv" else inner
        cache = DynamicCache()
        with torch.inference_mode(), press(model):
            model(ids, past_key_values=cache)
        layers = []
        for idx, layer in enumerate(cache.layers):
            reference = full.layers[idx].keys[0]
            module = model.model.layers[idx].self_attn
            heads = []
            for h in range(reference.shape[0]):
                if spec["press"] == "think":
                    heads.append(nonzero_channels(layer.keys[0, h]))
                elif spec["press"] == "adakv":  # AdaKV masks instead of removing: kept = not masked
                    _, head_of, seq_of = module.masked_key_indices
                    masked = set(seq_of[head_of == h].tolist())
                    heads.append([j for j in range(reference.shape[1]) if j not in masked])
                else:
                    heads.append(rows_of(layer.keys[0, h], reference[h]))
            layers.append(heads)
        result[case] = layers
    args.out.write_text(json.dumps(result))
    return 0


# --- our side ---------------------------------------------------------------------------------------------------------

def our_side(args: argparse.Namespace) -> int:
    import torch

    from cachebench.engine.chat import ChatFormat
    from cachebench.engine.runner import RunSettings, prepare_episodes
    from cachebench.engine.session import KVSession, LayerHooks
    from cachebench.eval_run import EvalRequest, build_episodes
    from cachebench.method import KVMethod
    from cachebench.models import embedded
    from cachebench.models.loading import load_model
    from cachebench.registry import build_method
    from cachebench.taskspec import resolve_tasks

    if not args.kvpress_python:
        print("error: --kvpress-python is required (the python of an environment with kvpress installed)",
              file=sys.stderr)
        return 2
    model = load_model("embedded", "float32", "cpu", "sdpa")
    spec = resolve_tasks("multiturn.passkey")[0]
    request = EvalRequest(method="full", task=spec.name, limit=1, context_tokens=args.context_tokens)
    ids = prepare_episodes(build_episodes(spec, request, model), spec, model, ChatFormat(model.tokenizer),
                           RunSettings(mode="multi-request"))[0].context_ids
    ids = [int(i) for i in ids]
    hooks = LayerHooks(model.model)
    try:
        with torch.inference_mode():
            full = KVSession(model, KVMethod(None), hooks)
            full.forward(ids, "context")
            ours: dict[str, list[list[list[int]]]] = {}
            for case in args.cases:
                name, settings, spec_press = CASES[case]
                method = build_method(name, [s.format(ratio=args.ratio, window=args.window, kernel=args.kernel,
                                                      channels=args.channels) for s in settings])
                session = KVSession(model, method, hooks, query_aware=False)
                session.forward(ids, "context")
                layers = []
                for idx, layer in enumerate(session.cache.layers):
                    reference = full.cache.layers[idx].keys[0]
                    if spec_press["press"] == "think":  # the kept channel indices the pruned keys are stored with
                        layers.append([sorted(int(c) for c in layer.channels[0, h]) for h in range(reference.shape[0])])
                    elif getattr(layer, "is_split", False):
                        layers.append([rows_of(head[0], reference[h]) for h, head in enumerate(layer.head_keys)])
                    else:
                        layers.append([rows_of(layer.keys[0, h], reference[h]) for h in range(reference.shape[0])])
                ours[case] = layers
    finally:
        hooks.remove()

    with tempfile.TemporaryDirectory() as tmp:
        ids_file, out_file = Path(tmp) / "ids.json", Path(tmp) / "kvpress.json"
        ids_file.write_text(json.dumps(ids))
        command = [args.kvpress_python, __file__, "--side", "kvpress", "--ids", str(ids_file), "--model-dir",
                   str(embedded.converted_folder()), "--out", str(out_file), "--ratio", str(args.ratio),
                   "--channels", str(args.channels), "--window", str(args.window), "--kernel", str(args.kernel),
                   "--cases", *args.cases]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"error: the kvpress side failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            return 1
        theirs = json.loads(out_file.read_text())
    kvpress_version = subprocess.run([args.kvpress_python, "-c", "from importlib.metadata import version; "
                                      "print(version('kvpress'), version('transformers'))"],
                                     capture_output=True, text=True).stdout.strip()
    print(f"context {len(ids)} tokens, float32 CPU; ratio {args.ratio}, ThinK channels {args.channels}, window "
          f"{args.window}, kernel {args.kernel}; kvpress side: kvpress/transformers {kvpress_version}\n")
    print("| case | layer x head pairs | identical choice | mean overlap | min overlap | "
          "kept per head (ours / kvpress, mean) |")
    print("|---|---|---|---|---|---|")
    differing: list[str] = []
    for case in args.cases:
        overlaps, same, sizes_ours, sizes_theirs = [], 0, [], []
        for idx, (our_layer, their_layer) in enumerate(zip(ours[case], theirs[case], strict=True)):
            for h, (a, b) in enumerate(zip(our_layer, their_layer, strict=True)):
                overlaps.append(len(set(a) & set(b)) / max(1, len(b)))
                same += set(a) == set(b)
                sizes_ours.append(len(a))
                sizes_theirs.append(len(b))
                if set(a) != set(b):
                    differing.append(f"{case} layer {idx} head {h}: ours only {sorted(set(a) - set(b))[:8]}, "
                                     f"kvpress only {sorted(set(b) - set(a))[:8]}")
        print(f"| {case} | {len(overlaps)} | {same / len(overlaps):.1%} | {statistics.fmean(overlaps):.4f} | "
              f"{min(overlaps):.4f} | {statistics.fmean(sizes_ours):.1f} / {statistics.fmean(sizes_theirs):.1f} |")
    if differing:
        print("\nwhere the choices differ (first 10):")
        print("\n".join(differing[:10]))
    return 0


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    return kvpress_side(args) if args.side == "kvpress" else our_side(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
