#!/usr/bin/env bash
# Install pronlora with its test extras into ./.venv (CPU torch) and run lint + the test suite.
# This is the README's test command and what .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh
.venv/bin/ruff check .
# three workers on 2 cores: much of a test waits on its subprocesses or Slurm jobs. One worker
# per test file: module fixtures (the Slurm site, the distributed reference run) are built once.
# tests/conftest.py deals test_slurm.py (mostly waiting on Slurm) first, then xdist's order
# (the files with the most tests first): 19:04 against 21:40 when it came last and ran alone
# (bench/results/cpu-2026-12-07-suite-cpu.md).
# tests/conftest.py gives every process one OpenMP thread (23:27 -> 16:53).
.venv/bin/python -m pytest -q -ra --durations=20 -n 3 --dist loadfile "$@"
