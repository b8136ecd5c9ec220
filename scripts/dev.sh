#!/usr/bin/env bash
# One entry point for developers and CI: sets up .venv on first use, then runs what you ask:
#   bash scripts/dev.sh demo [args]   - the main demo
#   bash scripts/dev.sh test [args]   - the test suite (pytest)
#   bash scripts/dev.sh bench [args]  - the benchmark table
#   bash scripts/dev.sh lint          - ruff + mypy
#   bash scripts/dev.sh docs [args]   - the documentation site (mkdocs; default: build --strict)
#
# Two set-ups, both the CPU build of PyTorch and gradwatch in editable mode:
#   demo: what the demo imports and nothing else (torch, gradwatch and its dependencies);
#   dev:  the dev and docs extras on top (pytest, ruff, mypy, Lightning, transformers,
#         scikit-learn, mkdocs ...), for everything but the demo.
# Each is redone when pyproject.toml or this script changes; dev includes demo.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
PY="$VENV/bin/python"
# The CPU build of PyTorch, pinned: an unpinned torch may pull a multi-GB CUDA build. It is
# also the floor that pyproject.toml claims (tests/test_architecture.py checks they agree).
TORCH="torch==2.13.0"
want="$(cat pyproject.toml scripts/dev.sh | sha256sum | cut -d' ' -f1)"

pip_quiet() {
  "$PY" -m pip install -q "$@" 2>&1 | grep -v '^WARNING: Location' >&2 || true
}

# set_up demo|dev: install what that set-up needs unless its stamp says it is up to date.
set_up() {
  local level="$1"
  [ -x "$PY" ] && [ "$(cat "$VENV/.setup-dev" 2>/dev/null)" = "$want" ] && return 0
  [ "$level" = demo ] && [ -x "$PY" ] \
    && [ "$(cat "$VENV/.setup-demo" 2>/dev/null)" = "$want" ] && return 0
  echo "[dev.sh] setting up $VENV for $level (first run or changed dependencies)..." >&2
  python3 -m venv "$VENV"
  pip_quiet --upgrade pip
  if [ "$level" = demo ]; then
    pip_quiet -e . "$TORCH"
  else
    # torch named again, pinned, so that no dependency (lightning, accelerate) upgrades it.
    pip_quiet -e ".[dev,docs]" "$TORCH"
  fi
  "$PY" -c "import torch, gradwatch" || { echo "[dev.sh] set-up failed" >&2; exit 1; }
  [ "$level" = demo ] || "$PY" -c "import pytest, mkdocs" \
    || { echo "[dev.sh] set-up failed" >&2; exit 1; }
  echo "$want" > "$VENV/.setup-$level"
  [ "$level" = demo ] || echo "$want" > "$VENV/.setup-demo"
}

cmd="${1:-test}"
shift || true
case "$cmd" in
  demo)  set_up demo; exec "$PY" examples/demo.py "$@" ;;
  test)  set_up dev; exec "$PY" -m pytest "$@" ;;
  bench) set_up dev; exec "$PY" benchmarks/bench_overhead.py "$@" ;;
  lint)  set_up dev; "$VENV/bin/ruff" check gradwatch tests examples benchmarks && exec "$VENV/bin/mypy" ;;
  docs)  set_up dev; if [ $# -eq 0 ]; then set -- build --strict; fi
         exec "$PY" -m mkdocs "$@" ;;
  *) echo "usage: bash scripts/dev.sh {demo|test|bench|lint|docs} [args]" >&2; exit 2 ;;
esac
