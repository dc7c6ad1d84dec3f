#!/usr/bin/env bash
# Create ./.venv (if missing) and install pronlora with the CPU torch and the pinned lock.
# Used by tests/run.sh and demo.sh, so the README's two commands install the same way.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
# torch first: 2.13.0 resolves to the local CPU build; any other spec pulls GBs of CUDA wheels.
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -c containers/requirements.lock -e '.[test]'
