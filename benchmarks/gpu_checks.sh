#!/usr/bin/env bash
# The GPU checks the KV-compression methods still owe, as one short script for the lent GPU (device tool).
# Random-weight models need the embedded tokenizer only; carry its files (3.5 MB) in an ignored folder:
#   echo /.gpu/ >> .git/info/exclude
#   mkdir -p .gpu/cache/models/smollm2-135m-instruct
#   cp ~/.cache/cachebench/models/smollm2-135m-instruct/{tokenizer.json,tokenizer_config.json,chat_template.jinja} \
#      .gpu/cache/models/smollm2-135m-instruct/
#   run(command="bash benchmarks/gpu_kv_checks.sh", carry=[".gpu"], timeout_s=540)
# That machine has torch, transformers 5.17, pyarrow, typer, rich, pyyaml and no network; cachebench itself is
# installed from this checkout without dependencies. It prints two tables and writes Parquet rows under $OUT.
#   1. every method once on CUDA through `cachebench eval` (random weights of SmolLM2's shape: the CUDA code paths
#      of the hooks, masks and cache layers, not quality);
#   2. prefill and decode time of every method against `full` on an 8B-shaped random model at 8k tokens.
set -euo pipefail
out="${OUT:-/tmp/cachebench-gpu}"
mkdir -p "$out"
python3 -m pip install -q --no-deps --no-build-isolation --no-index --target /tmp/cachebench-site . >/dev/null
export PYTHONPATH=/tmp/cachebench-site
export CACHEBENCH_CACHE="$PWD/.gpu/cache"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
for method in full streamingllm h2o snapkv pyramidkv cake windowkv tokenselect razorattention; do
  for setting in query-agnostic query-aware; do
    python3 -m cachebench.cli eval --method "$method" --task multiturn --model random:smollm2-135m --device cuda \
      --limit 2 --compression "$setting" --out "$out/eval" -q >/dev/null
  done
done
python3 -m cachebench.cli show "$out/eval"
python3 benchmarks/kv_overhead.py --model random:llama-3.1-8b --device cuda --context-tokens 8192 --rounds 3 \
  --decode-steps 16
