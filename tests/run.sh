#!/usr/bin/env bash
# Install pronlora with its test extras into ./.venv (CPU torch) and run lint + the test suite.
# This is the README's test command and what .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest -q -ra --durations=20 "$@"
