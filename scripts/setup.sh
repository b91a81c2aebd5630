#!/usr/bin/env bash
# Set up .venv with the pinned CPU torch wheel first (an unpinned torch pulls a multi-GB CUDA
# build), then the project and its dev tools. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -qq --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -qq --disable-pip-version-check torch==2.13.0
.venv/bin/python -m pip install -qq --disable-pip-version-check -e '.[dev]'
