#!/usr/bin/env bash
# GPU check of the rasterizer, in one go (about 8 minutes at most): installs the CUDA jax plugin, builds
# the CUDA library, runs the GPU tests and the rasterizer benchmark with its cuda column, prints a summary.
#
#   bash benchmarks/gpu_check.sh              # on a machine with an NVIDIA GPU (and nvcc for the build)
#   bash benchmarks/gpu_check.sh --dry-run    # anywhere: skips the plugin and the CUDA build, runs the rest
#                                             # on what is there (GPU tests skip) to check the script itself
#
# Environment: PYTHON (default: .venv/bin/python if present, else python3), GPU_CHECK_WHEELS (a folder of
# wheels for an offline install of the plugin: pip --no-index --find-links), GPU_CHECK_BUDGET_S (480),
# INSTANT4D_CUDA_ARCHS (passed to the build; setup.py's default covers 75-90). Each step runs under its own
# timeout and is skipped when the overall budget is spent; the summary says what ran, passed or failed.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
BUDGET=${GPU_CHECK_BUDGET_S:-480}
START=$SECONDS
if [[ -n "${PYTHON:-}" ]]; then :; elif [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
LOG=$(mktemp -d /tmp/gpu_check.XXXXXX)
declare -a SUMMARY=()

# step NAME TIMEOUT_S COMMAND...: runs COMMAND with its output in $LOG/NAME.log (and on the console),
# records "NAME: ok|FAILED (rc)|timed out|skipped (reason) in Ns" for the summary.
step() {
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET - (SECONDS - START)))
  if ((left < 20)); then
    SUMMARY+=("$name: skipped (budget of ${BUDGET}s spent)")
    return 1
  fi
  ((limit > left)) && limit=$left
  echo "=== $name (limit ${limit}s) ==="
  local t0=$SECONDS rc
  timeout "$limit" "$@" 2>&1 | tee "$LOG/$name.log"
  rc=${PIPESTATUS[0]}
  local took=$((SECONDS - t0))
  if ((rc == 0)); then
    SUMMARY+=("$name: ok in ${took}s")
  elif ((rc == 124)); then
    SUMMARY+=("$name: timed out after ${took}s")
  else
    SUMMARY+=("$name: FAILED (exit $rc) in ${took}s; log $LOG/$name.log")
  fi
  return "$rc"
}

skip() { SUMMARY+=("$1: skipped ($2)"); }

# 1. The machine.
GPU_NAME=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n1)
if [[ -z "$GPU_NAME" && $DRY == 0 ]]; then
  echo "no NVIDIA GPU visible (nvidia-smi found nothing); use --dry-run to check the script without one" >&2
  exit 2
fi
JAXLIB=$("$PYTHON" -c "import jaxlib; print(jaxlib.__version__)" 2>/dev/null)
if [[ -z "$JAXLIB" ]]; then
  echo "$PYTHON cannot import jaxlib: create the environment first (README, set-up)" >&2
  exit 2
fi
NVCC=$(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null || true)
echo "GPU: ${GPU_NAME:-none}; python: $PYTHON; jaxlib $JAXLIB; nvcc: ${NVCC:-none}; logs in $LOG"

# 2. The CUDA plugin of jaxlib's version (jax-cuda13-plugin + pjrt, and the CUDA runtime wheels it needs).
has_gpu_jax() { "$PYTHON" -c "import jax, sys; sys.exit(0 if any(d.platform == 'gpu' for d in jax.devices()) else 1)" 2>/dev/null; }
if ((DRY)); then
  skip plugin "dry run"
elif has_gpu_jax; then
  SUMMARY+=("plugin: already installed")
else
  PIP_ARGS=()
  [[ -n "${GPU_CHECK_WHEELS:-}" ]] && PIP_ARGS=(--no-index --find-links "$GPU_CHECK_WHEELS")
  step plugin 240 "$PYTHON" -m pip install -q "${PIP_ARGS[@]}" "jax[cuda13]==$JAXLIB"
  has_gpu_jax || SUMMARY+=("plugin: jax still sees no GPU after the install")
fi

# 3. The CUDA library (INSTANT4D_CUDA=1 makes the build fail rather than skip it when nvcc is missing).
if ((DRY)); then
  skip build "dry run"
elif [[ -z "$NVCC" ]]; then
  skip build "nvcc not found: the cuda backend cannot be built here"
else
  step build 240 env INSTANT4D_CUDA=1 "$PYTHON" -m pip install -q --no-deps --no-build-isolation -e .
fi
CUDA_OK=$("$PYTHON" -c "
from rasterizer_ffi import ffi, available_backends
print('yes' if 'cuda' in available_backends() else 'no: ' + (ffi.load_error('cuda') or 'no GPU device'))" 2>&1 | tail -n1)
SUMMARY+=("cuda backend available: $CUDA_OK")

# 4. Tests: the GPU-marked native tests, the cuda parametrisations of the backend tests, and the exact xla
#    path on the default device (the GPU, when there is one).
# pytest exits 5 when a selection is empty (e.g. every GPU test deselected): not a failure here.
step tests 200 bash -c '
  rc=0
  for sel in "tests/test_native.py -m gpu" "tests/test_rasterizer.py -k cuda" "tests/test_rasterizer_xla.py -k exact"; do
    echo "--- pytest $sel"
    "$0" -m pytest -q -ra $sel
    r=$?
    if [[ $r != 0 && $r != 5 ]]; then rc=$r; fi
  done
  exit $rc' "$PYTHON"
TESTS_LINE=$(grep -E "[0-9]+ (passed|failed|skipped|deselected|error)" "$LOG/tests.log" 2>/dev/null | paste -sd ";" -)

# 5. The benchmark: cuda beside cpu, exact xla and xla at K = 256, one process.
if [[ "$CUDA_OK" == yes ]]; then
  BACKENDS=cuda,cpu,xla,xla256
  SIZES=(--sizes 256,512 --gaussians 50000,262144 --channels 32 --repeats 5)
else
  BACKENDS=cpu,xla,xla256
  SIZES=(--sizes 128 --gaussians 10000 --channels 32 --repeats 2)
fi
step benchmark 240 "$PYTHON" benchmarks/rasterizer.py --backends "$BACKENDS" "${SIZES[@]}"

echo
echo "=== summary ($((SECONDS - START))s; GPU: ${GPU_NAME:-none}; jaxlib $JAXLIB) ==="
for line in "${SUMMARY[@]}"; do echo "  $line"; done
echo "  tests: ${TESTS_LINE:-no result}"
echo "  benchmark ($BACKENDS):"
grep -E "^\|" "$LOG/benchmark.log" 2>/dev/null | sed 's/^/    /'
for line in "${SUMMARY[@]}"; do
  [[ "$line" == *FAILED* || "$line" == *"timed out"* ]] && exit 1
done
exit 0
