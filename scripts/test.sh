#!/usr/bin/env bash
# Set up, lint, type-check and run the test suite. `scripts/test.sh --slow` also runs the
# checks marked slow; any other arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check search techniques tests examples benchmarks
.venv/bin/ruff format --check search techniques tests examples benchmarks
.venv/bin/mypy
if [ "${1:-}" = "--slow" ]; then
  shift
  exec .venv/bin/python -m pytest -m "slow or not slow" "$@"
fi
exec .venv/bin/python -m pytest "$@"
