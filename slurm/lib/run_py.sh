#!/usr/bin/env bash
# run_py as a command (for srun, which starts programs, not shell functions): python inside the
# container when env.sh names one, directly otherwise.
set -euo pipefail
# shellcheck source=common.sh
source "${PRONLORA_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}/slurm/lib/common.sh"
run_py "$@"
