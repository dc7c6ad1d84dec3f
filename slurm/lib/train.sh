# shellcheck shell=bash
# The training template; each slurm/train_<config>.sbatch sets PRONLORA_TRAIN_CONFIG and sources it.
#
# One process per GPU. A job of one GPU runs jobs/train.py directly; a job of several GPUs or
# nodes runs one torchrun per node through srun (c10d rendezvous on the first node, port derived
# from the job id), G ranks per node where G is the GPUs Slurm gave the node.
#
# Requeue protocol: Slurm sends USR1 to this shell PRONLORA_SIGNAL_GRACE_S before the time limit
# (and TERM on preemption or `scontrol requeue`). One process: we pass the signal on; the trainer
# saves a step checkpoint and exits 3. Several: torchrun does not forward USR1 (and turns a
# worker's non-zero exit into a failure), so we create the stop file instead; the ranks agree to
# stop at the same step, save, exit 0, and rank 0 leaves the requeue marker. Either way we then
# requeue the job and the rerun resumes from that checkpoint, on any number of GPUs.
set -uo pipefail
# shellcheck source=common.sh
source "${PRONLORA_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}/slurm/lib/common.sh"
require_gpu
require_var PRONLORA_TRAIN_CONFIG
RUN_DIR=${PRONLORA_RUN_DIR:-$PRONLORA_RUNS/$PRONLORA_TRAIN_CONFIG}
mkdir -p "$RUN_DIR/logs"
STOP_FILE=$RUN_DIR/stop.request
REQUEUE_MARKER=$RUN_DIR/requeue.json
rm -f "$STOP_FILE" "$REQUEUE_MARKER"  # left by the run this one resumes
nodes=${SLURM_JOB_NUM_NODES:-1}
procs=${SLURM_GPUS_ON_NODE:-$PRONLORA_GPUS_PER_NODE}  # CPU-only nodes: env.sh's count
echo "pronlora train: config $PRONLORA_TRAIN_CONFIG, run dir $RUN_DIR, job ${SLURM_JOB_ID:-local}" \
    "restart ${SLURM_RESTART_COUNT:-0}, $nodes node(s) x $procs process(es)"
# shellcheck disable=SC2206  # PRONLORA_TRAIN_OVERRIDES is a list of key=value words
train_args=(jobs/train.py --config "$PRONLORA_TRAIN_CONFIG" --prepared "$PRONLORA_PREPARED"
    --model "$PRONLORA_MODEL" --run-dir "$RUN_DIR" --stop-file "$STOP_FILE"
    --requeue-marker "$REQUEUE_MARKER" ${PRONLORA_TRAIN_OVERRIDES:-})

if [ $((nodes * procs)) -eq 1 ]; then
    run_py "${train_args[@]}" &
    child=$!
    # shellcheck disable=SC2317  # called from the traps below
    forward() { kill -"$1" "$child" 2>/dev/null || true; }
else
    require_var SLURM_JOB_ID
    # the first node's address as Slurm reaches it (its NodeAddr; the node name if none)
    first_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
    rdzv_host=$(scontrol show node "$first_node" | sed -n 's/.*NodeAddr=\([^ ]*\).*/\1/p')
    rdzv_host=${rdzv_host:-$first_node}
    rdzv_port=$((20000 + SLURM_JOB_ID % 20000))
    srun --nodes="$nodes" --ntasks-per-node=1 --kill-on-bad-exit=1 \
        "$PRONLORA_ROOT/slurm/lib/run_py.sh" -m torch.distributed.run --nnodes="$nodes" \
        --nproc-per-node="$procs" --rdzv-backend=c10d --rdzv-endpoint="$rdzv_host:$rdzv_port" \
        --rdzv-id="$SLURM_JOB_ID" --max-restarts=0 "${train_args[@]}" &
    child=$!
    # shellcheck disable=SC2317  # called from the traps below
    forward() { echo "pronlora train: got $1, asking the ranks to stop"; touch "$STOP_FILE"; }
fi
trap 'forward USR1' USR1
trap 'forward TERM' TERM
trap 'forward USR2' USR2
rc=0
while true; do
    wait "$child"
    rc=$?
    kill -0 "$child" 2>/dev/null || break  # wait returned for a trapped signal: keep waiting
done

if [ "$rc" -eq 3 ] || { [ "$rc" -eq 0 ] && [ -f "$REQUEUE_MARKER" ]; }; then
    echo "pronlora train: checkpoint saved after a stop request; requeueing job ${SLURM_JOB_ID:-}"
    if [ -n "${SLURM_JOB_ID:-}" ]; then
        scontrol requeue "$SLURM_JOB_ID" || true  # already requeued by Slurm on preemption
    fi
    exit 0
fi
exit "$rc"
