#!/usr/bin/env bash
# The perf GPU checks in one script for the lent GPU (device tool), under 8 minutes: graph decode against eager
# decode, then `cachebench perf` on the 8B shape with its floors (result rows under $OUT/rows). Random-weight
# models need the embedded tokenizer only; carry it as benchmarks/gpu_checks.sh explains (.gpu/cache), plus any
# wheel the machine lacks under .gpu/wheels (installed with --no-index):
#   run(command="bash benchmarks/gpu_perf.sh", carry=[".gpu"], timeout_s=540)
set -uo pipefail
out="${OUT:-/tmp/cachebench-gpu}"
mkdir -p "$out"
if compgen -G ".gpu/wheels/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps .gpu/wheels/*.whl
fi
python3 -m pip install -q --upgrade --no-deps --no-build-isolation --no-index --target /tmp/cachebench-site . >/dev/null
export PYTHONPATH=/tmp/cachebench-site PYTHONUNBUFFERED=1
export CACHEBENCH_CACHE="$PWD/.gpu/cache"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/card.txt"
date -u | tee -a "$out/card.txt"
echo "## 1. graph decode = eager decode"
python3 benchmarks/graph_check.py --model random:smollm2-135m 2>&1 | tee "$out/graph_check.md"
echo "## 2. perf, 8B shape, batch 1"
python3 -m cachebench.cli perf --model random:llama-3.1-8b --method full --method snapkv --method pyramidkv \
  --param ratio=0.75 --context 4096 --context 16384 --context 32768 --repeats 3 --decode-steps 32 \
  --out "$out/rows" --json "$out/perf_b1.json" 2>&1 | tee "$out/perf_b1.md"
echo "## 3. throughput at a 75 GiB budget, 8B shape, 32k"
python3 -m cachebench.cli perf --model random:llama-3.1-8b --method full --method snapkv --param ratio=0.75 \
  --context 32768 --repeats 1 --decode-steps 16 --memory-budget-gib 75 --json "$out/perf_budget.json" \
  2>&1 | tee "$out/perf_budget.md"
