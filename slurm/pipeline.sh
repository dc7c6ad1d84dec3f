#!/usr/bin/env bash
# Submit the whole chain prep -> train -> infer (array) -> collect with afterok dependencies.
#
#   slurm/pipeline.sh --config paper_r64 [--epochs 1,2,3] [--shards 4] [--run-dir DIR]
#                     [--nodes N] [--gpus-per-node G] [--no-prep] [--set key=value ...]
#                     [--dry-run]
#   slurm/pipeline.sh --experiment table3 [--seeds N] [--config smoke] [...]   a grid
#   slurm/pipeline.sh --status DIR [--json]    where a submitted plan stands (jobs/status.py)
#
# Prints the plan, then the run dir and job ids as key=value lines (--dry-run: the sbatch
# commands, nothing submitted). The plan is jobs/submit.py's (one plan, built and validated in
# Python; this script is its sbatch backend). Site settings come from env.sh. With
# PRONLORA_CONTAINER set, the plan is built in the image and only sbatch runs on the host: a
# login node needs apptainer and sbatch, no Python. Exit 2: bad arguments, config or settings,
# or a submission Slurm refused (nothing is left queued).

set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export PRONLORA_ROOT=${PRONLORA_ROOT:-$(dirname "$here")}
# shellcheck source=lib/common.sh
source "$here/lib/common.sh"

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
for arg in "$@"; do
    case "$arg" in -h|--help) usage 0 ;; esac
done
if [ "${1:-}" = --status ]; then
    shift
    if [ -z "$PRONLORA_CONTAINER" ]; then
        require_python
        exec "$PRONLORA_PYTHON" "$PRONLORA_ROOT/jobs/status.py" "$@"
    fi
    run_py "$PRONLORA_ROOT/jobs/status.py" "$@"
    exit
fi
if [ -z "$PRONLORA_CONTAINER" ]; then
    require_python
    exec "$PRONLORA_PYTHON" "$PRONLORA_ROOT/jobs/submit.py" --executor sbatch "$@"
fi
if [ ! -f "$PRONLORA_CONTAINER" ]; then
    echo "error: PRONLORA_CONTAINER=$PRONLORA_CONTAINER: no such image file (env.sh)" >&2
    exit 2
fi
if ! command -v apptainer > /dev/null; then
    echo "error: PRONLORA_CONTAINER is set, but apptainer is not on PATH" >&2
    exit 2
fi
dry=0
for arg in "$@"; do
    [ "$arg" = --dry-run ] && dry=1
done
if [ "$dry" = 1 ]; then
    run_py "$PRONLORA_ROOT/jobs/submit.py" --executor sbatch "$@"
    exit
fi
# the checkout is bound into the image (run_py), so the script written there is readable here
script=$(mktemp "$PRONLORA_ROOT/.submit-XXXXXX.sh")
trap 'rm -f "$script"' EXIT
run_py "$PRONLORA_ROOT/jobs/submit.py" --executor sbatch --emit-script "$script" "$@"
bash "$script"
