# shellcheck shell=bash
# The training template; each slurm/train_<config>.sbatch sets PRONLORA_TRAIN_CONFIG and sources it.
# Requeue protocol: Slurm sends USR1 to this shell PRONLORA_SIGNAL_GRACE_S before the time limit
# (and TERM on preemption or `scontrol requeue`); we pass it on to the trainer, which saves a
# step checkpoint and exits 3; we then requeue the job, and the rerun resumes from that checkpoint.
set -uo pipefail
# shellcheck source=common.sh
source "${PRONLORA_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}/slurm/lib/common.sh"
require_gpu
require_var PRONLORA_TRAIN_CONFIG
RUN_DIR=${PRONLORA_RUN_DIR:-$PRONLORA_RUNS/$PRONLORA_TRAIN_CONFIG}
mkdir -p "$RUN_DIR/logs"
echo "pronlora train: config $PRONLORA_TRAIN_CONFIG, run dir $RUN_DIR, job ${SLURM_JOB_ID:-local}" \
    "restart ${SLURM_RESTART_COUNT:-0}"

# shellcheck disable=SC2086  # PRONLORA_TRAIN_OVERRIDES is a list of key=value words
run_py jobs/train.py --config "$PRONLORA_TRAIN_CONFIG" --prepared "$PRONLORA_PREPARED" \
    --model "$PRONLORA_MODEL" --run-dir "$RUN_DIR" ${PRONLORA_TRAIN_OVERRIDES:-} &
child=$!
# shellcheck disable=SC2317  # called from the traps below
forward() { kill -"$1" "$child" 2>/dev/null || true; }
trap 'forward USR1' USR1
trap 'forward TERM' TERM
trap 'forward USR2' USR2
rc=0
while true; do
    wait "$child"
    rc=$?
    kill -0 "$child" 2>/dev/null || break  # wait returned for a trapped signal: keep waiting
done

if [ "$rc" -eq 3 ]; then
    echo "pronlora train: checkpoint saved after a stop signal; requeueing job ${SLURM_JOB_ID:-}"
    if [ -n "${SLURM_JOB_ID:-}" ]; then
        scontrol requeue "$SLURM_JOB_ID" || true  # already requeued by Slurm on preemption
    fi
    exit 0
fi
exit "$rc"
