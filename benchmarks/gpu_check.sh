#!/usr/bin/env bash
# One prepared device run of radixgen's GPU path (benchmarks/gpu_check.py says what it runs): results in
# $OUT/gpu_check.json, everything printed in $OUT/gpu_check.log (OUT defaults to ./gpu_check_out).
#
#   bash benchmarks/gpu_check.sh --prepare   here, with PyPI access: .gpu_check_bundle/ (wheels the device image
#                                            lacks, ../shared files) to carry to the device
#   bash benchmarks/gpu_check.sh             on the CUDA machine (< 8 minutes on an H200); with the bundle present it
#                                            installs it first (benchmarks/gpu_check_bundle.py)
#   bash benchmarks/gpu_check.sh --dry-run   the same steps on the CPU with tiny sizes (< 1 minute, CI)
#
# Other flags go to gpu_check.py: --budget-s S (global time budget of the steps), --only STEP,... PYTHON picks the
# interpreter (default: the repository's .venv when present, else python3). Exit status 0 only when every step
# ran and every check passed; 124 when the hard time limit (budget + 40 s) stopped the run.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUNDLE="$REPO/.gpu_check_bundle"
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x "$REPO/.venv/bin/python" ]; then PY="$REPO/.venv/bin/python"
else PY=python3; fi

if [ "${1:-}" = "--prepare" ]; then
  exec "$PY" "$REPO/benchmarks/gpu_check_bundle.py" prepare --bundle "$BUNDLE"
fi

dry=0; budget=""; prev=""  # the budget defaults are gpu_check.py's: 430 s, 240 s for --dry-run
for arg in "$@"; do
  case "$arg" in --dry-run) dry=1 ;; --budget-s=*) budget="${arg#*=}" ;; esac
  if [ "$prev" = "--budget-s" ]; then budget="$arg"; fi
  prev="$arg"
done
if [ -z "$budget" ]; then budget=$(( dry ? 240 : 430 )); fi
hard_limit=$(( ${budget%.*} + 40 ))

OUT="${OUT:-./gpu_check_out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
exec > >(tee "$OUT/gpu_check.log") 2>&1
tee_pid=$!
echo "gpu_check.sh $* ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(uname -n), python $("$PY" -c 'import sys; print(sys.version.split()[0])'))"

if [ "$dry" = 0 ] && [ -d "$BUNDLE" ]; then
  SITE="${GPU_CHECK_SITE:-/tmp/gpu_check_site}"
  "$PY" "$REPO/benchmarks/gpu_check_bundle.py" install --bundle "$BUNDLE" --target "$SITE" --repo "$REPO"
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  if [ ! -e "$REPO/../shared" ]; then ln -s "$BUNDLE/shared" "$REPO/../shared"; fi
fi
# the device reaches no network: never let a Hugging Face call wait on one
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1

status=0
timeout --signal=TERM --kill-after=20 "$hard_limit" "$PY" "$REPO/benchmarks/gpu_check.py" --out "$OUT" "$@" || status=$?
echo "gpu_check.sh: exit status $status"
exec >&- 2>&-
wait "$tee_pid" || true  # the log is complete before the script returns
exit "$status"
