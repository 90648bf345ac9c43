#!/usr/bin/env bash
# Every GPU check the KV methods owe, as one short script for the lent GPU (device tool), in order of importance.
# Random-weight models need the embedded tokenizer only; carry its files (3.5 MB) in an ignored folder:
#   echo /.gpu/ >> .git/info/exclude
#   mkdir -p .gpu/cache/models/smollm2-135m-instruct
#   cp ~/.cache/cachebench/models/smollm2-135m-instruct/{tokenizer.json,tokenizer_config.json,chat_template.jinja} \
#      .gpu/cache/models/smollm2-135m-instruct/
#   run(command="bash benchmarks/gpu_checks.sh", carry=[".gpu"], timeout_s=480)   # or: gpu_checks.sh reuse|overhead|eval
# That machine has torch, transformers 5.17, safetensors, pyarrow, typer, rich, pyyaml and no network; cachebench
# itself is installed from this checkout without dependencies. Each part prints a table and also writes it under $OUT.
#   1. reuse: request TTFT of prefix / naive-concat / kvlink / cacheblend against full prefill on an 8B-shaped
#      random model at 8k and 16k tokens, and cacheblend at ratio 1.0 against full prefill's logits;
#   2. compression: prefill and decode time of every eviction method against `full` on the 8B shape at 8k tokens;
#   3. every KV method once on CUDA through `cachebench eval` (random weights of SmolLM2's shape: the CUDA code
#      paths of hooks, masks, cache layers and the store, not quality).
set -uo pipefail
out="${OUT:-/tmp/cachebench-gpu}"
mkdir -p "$out"
python3 -m pip install -q --upgrade --no-deps --no-build-isolation --no-index --target /tmp/cachebench-site . >/dev/null
export PYTHONPATH=/tmp/cachebench-site PYTHONUNBUFFERED=1
export CACHEBENCH_CACHE="$PWD/.gpu/cache"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/card.txt"
date -u | tee -a "$out/card.txt"
part="${1:-all}"
if [ "$part" = all ] || [ "$part" = reuse ]; then
echo "## 1. reuse TTFT"
python3 benchmarks/reuse_ttft.py --model random:llama-3.1-8b --device cuda --contexts 8192 16384 --repeats 3 \
  2>&1 | tee "$out/reuse_ttft.md"
fi
if [ "$part" = all ] || [ "$part" = overhead ]; then
echo "## 2. compression overhead"
python3 benchmarks/kv_overhead.py --model random:llama-3.1-8b --device cuda --context-tokens 8192 --rounds 3 \
  --decode-steps 16 2>&1 | tee "$out/kv_overhead.md"
fi
if [ "$part" = all ] || [ "$part" = eval ]; then
echo "## 3. every method on CUDA"
site="$PWD"
cd /tmp  # the installed package, as a user's GPU box runs it, not the checkout
for method in full streamingllm h2o snapkv pyramidkv cake windowkv tokenselect razorattention \
              prefix naive-concat kvlink cacheblend; do
  python3 -m cachebench.cli eval --method "$method" --task multiturn.passkey --model random:smollm2-135m \
    --device cuda --limit 2 --compression query-aware --mode multi-request --out "$out/eval" -q >/dev/null \
    || echo "FAILED: $method"
done
python3 -m cachebench.cli show "$out/eval" 2>&1 | tee "$out/eval_show.txt"
cd "$site"
fi
