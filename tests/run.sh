#!/usr/bin/env bash
# Install pronlora with its test extras into ./.venv (CPU torch) and run lint + the test suite.
# This is the README's test command and what .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh
.venv/bin/ruff check .
# three workers on 2 cores: with two, the cores were busy 1.6 of 2 on average (much of a test
# waits on subprocesses or Slurm). One worker per test file: module fixtures (the Slurm site,
# the distributed reference run) are built once; files dealt longest first (conftest.py)
.venv/bin/python -m pytest -q -ra --durations=20 -n 3 --dist loadfile --no-loadscope-reorder "$@"
