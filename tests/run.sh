#!/usr/bin/env bash
# Install pronlora with its test extras into ./.venv (CPU torch) and run lint + the test suite.
# This is the README's test command and what .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# torch first: 2.13.0 resolves to the local CPU build; any other spec pulls GBs of CUDA wheels.
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -c containers/requirements.lock -e '.[test]'
.venv/bin/ruff check .
.venv/bin/python -m pytest -q -ra "$@"
