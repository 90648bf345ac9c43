#!/usr/bin/env bash
# What CI runs after scripts/setup.sh: the tests, then the CI suite and the regression gate against the committed
# reference (docs/ci.md). Every step runs even when an earlier one failed, so one log shows all that is wrong; the
# exit status is non-zero when any step failed. CACHEBENCH_SUITE_OUT picks the suite's output folder (new or
# empty; default: a fresh temporary folder, kept for inspection).
set -uo pipefail
cd "$(dirname "$0")/.."
failed=()

step() {
  local name=$1
  shift
  echo "== $name: $*" >&2
  local start=$SECONDS
  "$@"
  local code=$?
  if [ "$code" -ne 0 ]; then
    failed+=("$name (exit $code)")
  fi
  echo "== $name: exit $code after $((SECONDS - start)) s" >&2
}

# (a) The leaderboard's browser test drives Debian's Chromium through playwright; it fails, not skips, without it.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing chromium for the leaderboard browser test" >&2
    export DEBIAN_FRONTEND=noninteractive
    # an image with empty package lists needs an update first
    apt-get install -y -q chromium >/dev/null \
      || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; } \
      || echo "warning: apt-get could not install chromium; the leaderboard browser test will fail" >&2
  else
    echo "warning: chromium is not on PATH; install it (Debian/Ubuntu: sudo apt-get install chromium) or the" \
      "leaderboard browser test will fail" >&2
  fi
fi

# (b) The tests (two pytest-xdist workers, from pyproject).
step tests .venv/bin/python -m pytest -q

# (c) The CI suite, into a new folder.
out=${CACHEBENCH_SUITE_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/cachebench-ci.XXXXXX")}
step suite .venv/bin/cachebench suite run ci --out "$out"

# (d) The gate: the candidate's scores against the committed reference; its markdown report goes to stdout (and to
# the GitHub Actions job summary when there is one).
report="$out.gate.md"
gate_against_reference() {
  .venv/bin/cachebench gate --baseline results/reference/ci --candidate "$out" | tee "$report"  # pipefail: gate's code
}
step gate gate_against_reference
if [ -n "${GITHUB_STEP_SUMMARY:-}" ] && [ -s "$report" ]; then
  cat "$report" >>"$GITHUB_STEP_SUMMARY"
fi
echo "suite results: $out; gate report: $report" >&2

if [ "${#failed[@]}" -gt 0 ]; then
  echo "FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "all steps passed" >&2
