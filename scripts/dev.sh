#!/usr/bin/env bash
# One entry point for developers and CI: sets up .venv on first use (CPU PyTorch from the
# local wheel, gradwatch in editable mode with its dev extras), then runs what you ask:
#   bash scripts/dev.sh demo [args]   - the main demo
#   bash scripts/dev.sh test [args]   - the test suite (pytest)
#   bash scripts/dev.sh bench [args]  - the benchmark table
#   bash scripts/dev.sh lint          - ruff + mypy
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
PY="$VENV/bin/python"
STAMP="$VENV/.gradwatch-setup"
want="$(cat pyproject.toml scripts/dev.sh | sha256sum | cut -d' ' -f1)"
if [ ! -x "$PY" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  echo "[dev.sh] setting up $VENV (first run or changed dependencies)..." >&2
  python3 -m venv "$VENV"
  "$PY" -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' >&2 || true
  # The CPU build of PyTorch, pinned: an unpinned torch may pull a multi-GB CUDA build.
  "$PY" -m pip install -q "torch==2.13.0" 2>&1 | grep -v '^WARNING: Location' >&2 || true
  # torch named again, pinned, so that no dependency (lightning, accelerate) upgrades it.
  "$PY" -m pip install -q -e ".[dev]" "torch==2.13.0" 2>&1 | grep -v '^WARNING: Location' >&2 || true
  "$PY" -c "import torch, gradwatch, pytest" || { echo "[dev.sh] set-up failed" >&2; exit 1; }
  echo "$want" > "$STAMP"
fi
cmd="${1:-test}"
shift || true
case "$cmd" in
  demo)  exec "$PY" examples/demo.py "$@" ;;
  test)  exec "$PY" -m pytest "$@" ;;
  bench) exec "$PY" benchmarks/bench_overhead.py "$@" ;;
  lint)  "$VENV/bin/ruff" check gradwatch tests examples benchmarks && exec "$VENV/bin/mypy" ;;
  *) echo "usage: bash scripts/dev.sh {demo|test|bench|lint} [args]" >&2; exit 2 ;;
esac
