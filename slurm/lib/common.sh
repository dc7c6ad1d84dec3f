# shellcheck shell=bash
# Shared by every sbatch script: find the repo, load env.sh, run Python in or out of the container.

# Under sbatch the script runs from a spool copy, so locate the repo from the environment.
PRONLORA_ROOT=${PRONLORA_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}
if [ ! -f "$PRONLORA_ROOT/env.sh" ]; then
    echo "error: cannot find env.sh under PRONLORA_ROOT=$PRONLORA_ROOT; submit from the" \
        "pronlora checkout or export PRONLORA_ROOT" >&2
    exit 2
fi
# shellcheck source=../../env.sh
source "$PRONLORA_ROOT/env.sh"
cd "$PRONLORA_ROOT" || exit 2

# run_py SCRIPT ARGS...: python inside the container when one is configured, directly otherwise.
run_py() {
    if [ -n "$PRONLORA_CONTAINER" ]; then
        local binds=(--bind "$PRONLORA_ROOT")
        [ -n "$PRONLORA_BINDS" ] && binds+=(--bind "$PRONLORA_BINDS")
        apptainer exec --nv "${binds[@]}" "$PRONLORA_CONTAINER" python3 "$@"
    else
        "$PRONLORA_PYTHON" "$@"
    fi
}

# Refuse, in one line, a host Python that cannot import pronlora (rather than its traceback).
# Submission runs on the host (sbatch is there), also when the jobs run in the container.
require_python() {
    if ! "$PRONLORA_PYTHON" -c 'import pronlora' 2>/dev/null; then
        echo "error: PRONLORA_PYTHON=$PRONLORA_PYTHON cannot import pronlora; install it" \
            "(bash tools/install.sh makes $PRONLORA_ROOT/.venv, which env.sh then uses) or set" \
            "PRONLORA_PYTHON to the python that has it, or PRONLORA_CONTAINER to the image" >&2
        exit 2
    fi
}

# A GPU stage started without a GPU would train or decode on the CPU for days: refuse.
require_gpu() {
    if [ -n "$PRONLORA_GRES" ] && [ -z "${CUDA_VISIBLE_DEVICES:-}" ] && [ -z "${SLURM_JOB_GPUS:-}" ]; then
        echo "error: env.sh asks for GPUs (PRONLORA_GRES=$PRONLORA_GRES) but job" \
            "${SLURM_JOB_ID:-?} has none; submit with --gres=\"\$PRONLORA_GRES\" or through" \
            "slurm/pipeline.sh (or set PRONLORA_GRES= on CPU-only nodes)" >&2
        exit 2
    fi
}

require_var() {
    local name=$1
    if [ -z "${!name:-}" ]; then
        echo "error: $name is not set (export it or set it in env.sh)" >&2
        exit 2
    fi
}
