#!/usr/bin/env bash
# Install pronlora with its test extras into ./.venv (CPU torch) and run lint + the test suite.
# This is the README's test command and what .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh
.venv/bin/ruff check .
# two workers (the 2 cores; much of a test is waiting on subprocesses or Slurm), one per test file:
# module fixtures (the Slurm site, the distributed reference run) are built once
.venv/bin/python -m pytest -q -ra --durations=20 -n 2 --dist loadfile "$@"
