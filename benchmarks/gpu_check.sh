#!/usr/bin/env bash
# The GPU check, in one command (under 5 minutes on one GPU):
#
#   bash benchmarks/gpu_check.sh [bench_overhead.py options, e.g. --rounds 30]
#
# 1. finds a Python with a CUDA build of torch: python3 on PATH when it has that build and
#    numpy, tensorboard and pytest (a GPU image's own; nothing installed, no network), or
#    else a virtual environment (default ~/.cache/gradwatch-gpu-venv, with the system's
#    site packages visible) into which it installs what is missing: torch (unpinned: pip
#    picks the CUDA build for this machine, several GB), numpy, tensorboard, pytest.
#    gradwatch itself runs from this checkout;
# 2. fails at once, saying so, when torch sees no CUDA device (exit status 2; before
#    installing anything when nvidia-smi lists no GPU);
# 3. runs the CUDA-only tests (pytest -m cuda: tests/test_cuda.py and test_amp.py's; no
#    host sync in watched steps or in AMP unscaling and clipping under
#    torch.cuda.set_sync_debug_mode("error"), pinned host copies, device memory);
# 4. runs the overhead table on the GPU (benchmarks/bench_overhead.py --device cuda,
#    bigger batches), written to benchmarks/results/ (and to $OUT when that is set);
# 5. prints one summary (benchmarks/gpu_summary.py) and exits non-zero if a part failed.
#
# Environment: GPU_CHECK_PYTHON=/path/to/python uses that interpreter as it is (no
# installs); GPU_CHECK_VENV=DIR puts the environment elsewhere; GPU_CHECK_BENCH_TIMEOUT
# (seconds, default 170) bounds the table, GPU_CHECK_TEST_TIMEOUT (default 90) the tests.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO="$(pwd)"
log() { echo "[gpu_check] $*" >&2; }

# ----------------------------------------------------------------- 1. the interpreter
READY='import sys, numpy, tensorboard, pytest, torch; sys.exit(torch.version.cuda is None)'
if [ -n "${GPU_CHECK_PYTHON:-}" ]; then
  PY="$GPU_CHECK_PYTHON"
elif command -v python3 >/dev/null && python3 -c "$READY" 2>/dev/null; then
  PY="$(command -v python3)"  # the machine's own CUDA torch, as it is: nothing installed
  log "using $PY (a CUDA build of torch with numpy, tensorboard and pytest)"
else
  # Before installing several GB of torch: is there an NVIDIA GPU at all?
  if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    log "FAILED: no NVIDIA GPU found (nvidia-smi is missing or lists none); this check needs one"
    exit 2
  fi
  VENV="${GPU_CHECK_VENV:-$HOME/.cache/gradwatch-gpu-venv}"
  BASE="$(command -v python3 || command -v python || true)"
  if [ -z "$BASE" ]; then
    log "no python3 on PATH: install Python 3.11+ first"; exit 1
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    log "making $VENV (system site packages visible: a preinstalled torch is reused)"
    "$BASE" -m venv --system-site-packages "$VENV" || { log "python -m venv failed"; exit 1; }
  fi
  PY="$VENV/bin/python"
  # torch only when this environment has no CUDA build of it (an unpinned pip install
  # resolves to the CUDA build on Linux; never replace a working CUDA torch).
  if ! "$PY" -c "import torch, sys; sys.exit(torch.version.cuda is None)" 2>/dev/null; then
    log "installing torch (CUDA build) into $VENV ..."
    # --ignore-installed: a CPU-only torch among the system packages must not satisfy it
    "$PY" -m pip install -q --ignore-installed torch >&2 || { log "pip install torch failed"; exit 1; }
  fi
  missing=""
  for module in numpy tensorboard pytest; do
    "$PY" -c "import $module" 2>/dev/null || missing="$missing $module"
  done
  if [ -n "$missing" ]; then
    log "installing$missing ..."
    # shellcheck disable=SC2086  # one word per package
    "$PY" -m pip install -q $missing >&2 || { log "pip install$missing failed"; exit 1; }
  fi
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"  # gradwatch from this checkout

# ----------------------------------------------------------------- 2. is there a GPU?
if ! "$PY" - <<'EOF'
import sys
import torch
if not torch.cuda.is_available():
    print(
        f"[gpu_check] FAILED: no CUDA device: torch {torch.__version__} "
        f"(CUDA build: {torch.version.cuda or 'none, a CPU-only build'}) sees no GPU. "
        "This check needs a machine with an NVIDIA GPU and a CUDA build of torch.",
        file=sys.stderr,
    )
    sys.exit(2)
print(f"[gpu_check] {torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
      f"CUDA {torch.version.cuda}", file=sys.stderr)
EOF
then
  exit 2
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
RESULTS="${GPU_CHECK_RESULTS:-$REPO/benchmarks/results}"

# ----------------------------------------------------------------- 3. the CUDA tests
log "CUDA-only tests (pytest -m cuda tests) ..."
timeout "${GPU_CHECK_TEST_TIMEOUT:-90}" "$PY" -m pytest -q -p no:cacheprovider -m cuda \
  --junitxml="$WORK/cuda-tests.xml" tests 2>&1 | tee "$WORK/cuda-tests.txt" >&2
TESTS_RC=${PIPESTATUS[0]}

# ----------------------------------------------------------------- 4. the overhead table
log "overhead table on the GPU ..."
timeout "${GPU_CHECK_BENCH_TIMEOUT:-170}" "$PY" benchmarks/bench_overhead.py \
  --device cuda --batch-scale 8 --rounds 15 --own-steps 20 --memory-steps 2000 \
  --only timing,memory --out-dir "$RESULTS" "$@" 2>&1 | tee "$WORK/bench.txt" >&2
BENCH_RC=${PIPESTATUS[0]}
BENCH_FILE="$(sed -n 's/^results file: //p' "$WORK/bench.txt" | tail -n 1)"
if [ -n "${OUT:-}" ] && [ -n "$BENCH_FILE" ] && [ -f "$BENCH_FILE" ]; then
  cp "$BENCH_FILE" "$WORK/cuda-tests.txt" "$OUT/" 2>/dev/null || true
fi

# ----------------------------------------------------------------- 5. one summary
"$PY" benchmarks/gpu_summary.py --tests-rc "$TESTS_RC" --tests-xml "$WORK/cuda-tests.xml" \
  --bench-rc "$BENCH_RC" --bench-file "$BENCH_FILE" | tee "$WORK/summary.txt"
SUMMARY_RC=${PIPESTATUS[0]}
if [ -n "${OUT:-}" ]; then
  cp "$WORK/summary.txt" "$OUT/gpu_check-summary.txt" 2>/dev/null || true
fi
exit "$SUMMARY_RC"
