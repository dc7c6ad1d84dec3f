#!/usr/bin/env bash
# Submit the whole chain prep -> train -> infer (array) -> collect with afterok dependencies.
#
#   slurm/pipeline.sh --config paper_r64 [--epochs 1,2,3] [--shards 4] [--run-dir DIR]
#                     [--nodes N] [--gpus-per-node G] [--no-prep] [--set key=value ...]
#                     [--dry-run]
#
# Prints the job ids and the run dir as key=value lines (--dry-run: the sbatch commands, nothing
# submitted). Site settings come from env.sh (--nodes/--gpus-per-node override
# PRONLORA_NODES/PRONLORA_GPUS_PER_NODE for this chain). Exit 2: bad arguments or config.

set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export PRONLORA_ROOT=${PRONLORA_ROOT:-$(dirname "$here")}
# shellcheck source=lib/common.sh
source "$here/lib/common.sh"

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
config="" epochs="" shards=1 run_dir="" prep=1 overrides=() dry_run=0
nodes=$PRONLORA_NODES gpus=$PRONLORA_GPUS_PER_NODE
while [ $# -gt 0 ]; do
    case "$1" in
        --config) config=$2; shift 2 ;;
        --epochs) epochs=$2; shift 2 ;;
        --shards) shards=$2; shift 2 ;;
        --run-dir) run_dir=$2; shift 2 ;;
        --nodes) nodes=$2; shift 2 ;;
        --gpus-per-node) gpus=$2; shift 2 ;;
        --no-prep) prep=0; shift ;;
        --dry-run) dry_run=1; shift ;;
        --set) overrides+=("$2"); shift 2 ;;
        -h|--help) usage 0 ;;
        *) echo "error: unknown argument $1" >&2; usage 2 ;;
    esac
done
[ -n "$config" ] || { echo "error: --config is required" >&2; usage 2; }
for pair in "shards:$shards" "nodes:$nodes" "gpus-per-node:$gpus"; do
    [[ "${pair#*:}" =~ ^[1-9][0-9]*$ ]] || {
        echo "error: --${pair%%:*} must be a positive integer, got '${pair#*:}'" >&2; exit 2; }
done
# The GPU request follows the count: gpu:4 -> gpu:G, gpu:a100:4 -> gpu:a100:G.
[ -n "$PRONLORA_GRES" ] && PRONLORA_GRES="${PRONLORA_GRES%:*}:$gpus"
export PRONLORA_GPUS_PER_NODE=$gpus

require_python
# Validate the config (and overrides) for this many processes before anything is queued
# (the effective batch must split over them); learn its epoch count. Exit 2 on a bad config.
n_epochs=$(run_py -c 'import sys
from pronlora.config import ConfigError, load_config
from pronlora.train import accumulation_steps
try:
    cfg = load_config(sys.argv[2], sys.argv[3:])
    accumulation_steps(cfg, int(sys.argv[1]))
    print(cfg.epochs)
except ConfigError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(2)' "$((nodes * gpus))" "$config" "${overrides[@]}")
if [ -z "$epochs" ]; then
    epochs=$(seq -s, 1 "$n_epochs")
fi
checkpoints="base"
IFS=, read -r -a epoch_list <<< "$epochs"
for e in "${epoch_list[@]}"; do
    if ! [[ "$e" =~ ^[1-9][0-9]*$ ]] || [ "$e" -gt "$n_epochs" ]; then
        echo "error: --epochs: $e is not an epoch of $config (1..$n_epochs)" >&2
        exit 2
    fi
    checkpoints+=",epoch-$e"
done
n_ckpt=$(( ${#epoch_list[@]} + 1 ))

run_dir=${run_dir:-$PRONLORA_RUNS/$(basename "$config" .yaml)-$(date +%Y%m%d-%H%M%S)}
made_run_dir=0
[ -d "$run_dir" ] || made_run_dir=1
if [ "$dry_run" -eq 0 ]; then
    mkdir -p "$run_dir/logs"
    run_dir=$(cd "$run_dir" && pwd)
fi
# A submission that fails part-way cancels what it queued and removes a run dir it created.
queued=() train_job="" infer_job="" collect_job=""
cleanup() {
    if [ "$dry_run" -eq 0 ] && [ -z "$collect_job" ]; then
        if [ ${#queued[@]} -gt 0 ]; then scancel "${queued[@]}" 2>/dev/null || true; fi
        if [ "$made_run_dir" -eq 1 ]; then rm -rf "$run_dir"; fi
        echo "error: submission failed; nothing is left queued" >&2
    fi
}
trap cleanup EXIT
dry_id=100
submit() {  # submit VAR sbatch-args...: VAR = the job id (--dry-run: print the command instead)
    local var=$1 id
    shift
    if [ "$dry_run" -eq 1 ]; then
        echo "sbatch $*"
        dry_id=$((dry_id + 1))
        id=$dry_id
    else
        id=$(sbatch "$@")
        queued+=("${id%%;*}")
    fi
    printf -v "$var" '%s' "$id"
}
export PRONLORA_RUN_DIR=$run_dir PRONLORA_TRAIN_CONFIG=$config PRONLORA_CHECKPOINTS=$checkpoints \
    PRONLORA_SHARDS=$shards PRONLORA_TRAIN_OVERRIDES="${overrides[*]:-}"

common=(--parsable --chdir="$PRONLORA_ROOT")
resources=(--cpus-per-task="$((PRONLORA_CPUS_PER_TASK * gpus))")
[ -n "$PRONLORA_MEM" ] && resources+=(--mem="$PRONLORA_MEM")
gpu=()
[ -n "$PRONLORA_GRES" ] && gpu=(--gres="$PRONLORA_GRES")
after() { if [ -n "$1" ]; then echo "--dependency=afterok:$1"; fi; }

prep_job=""
if [ "$prep" -eq 1 ]; then
    submit prep_job "${common[@]}" --time="$PRONLORA_TIME_PREP" \
        --output="$run_dir/logs/%x-%j.out" "$PRONLORA_ROOT/slurm/prep.sbatch"
fi
# shellcheck disable=SC2046  # after prints one option or nothing
submit train_job "${common[@]}" "${resources[@]}" "${gpu[@]}" $(after "$prep_job") \
    --nodes="$nodes" --ntasks-per-node=1 \
    --time="$PRONLORA_TIME_TRAIN" --signal=B:USR1@"$PRONLORA_SIGNAL_GRACE_S" \
    --job-name="pronlora-train-$(basename "$config" .yaml)" \
    --output="$run_dir/logs/%x-%j.out" "$PRONLORA_ROOT/slurm/train.sbatch"
submit infer_job "${common[@]}" "${resources[@]}" "${gpu[@]}" --dependency=afterok:"$train_job" \
    --time="$PRONLORA_TIME_INFER" --array=0-$(( (n_ckpt * shards + gpus - 1) / gpus - 1 )) \
    --output="$run_dir/logs/%x-%A_%a.out" "$PRONLORA_ROOT/slurm/infer.sbatch"
submit collect_job "${common[@]}" --dependency=afterok:"$infer_job" \
    --time="$PRONLORA_TIME_COLLECT" --output="$run_dir/logs/%x-%j.out" \
    "$PRONLORA_ROOT/slurm/collect.sbatch"

trap - EXIT
[ "$dry_run" -eq 1 ] && echo "dry run: nothing submitted"
echo "run_dir=$run_dir"
echo "prep_job=${prep_job:-none}"
echo "train_job=$train_job ($nodes node(s) x $gpus process(es))"
echo "infer_job=$infer_job ($n_ckpt checkpoint(s) x $shards shard(s) over $gpus GPU(s) per task: $checkpoints)"
echo "collect_job=$collect_job"
echo "report=$run_dir/report/report.md"
