#!/usr/bin/env bash
# Install pronlora with its test extras into ./.venv (CPU torch) and run lint + the test suite.
# This is the README's test command and what .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh
.venv/bin/ruff check .
# three workers on 2 cores: much of a test waits on its subprocesses or Slurm jobs. One worker
# per test file: module fixtures (the Slurm site, the distributed reference run) are built once.
# xdist deals the files with the most tests first; dealing the longest first (test_slurm.py,
# --no-loadscope-reorder) measured slower: 24:35 against 22:51 (one CI run each, 2026-12-07).
# tests/conftest.py gives every process one OpenMP thread (23:27 -> 16:53).
.venv/bin/python -m pytest -q -ra --durations=20 -n 3 --dist loadfile "$@"
