#!/usr/bin/env bash
# Submit the whole chain prep -> train -> infer (array) -> collect with afterok dependencies.
#
#   slurm/pipeline.sh --config paper_r64 [--epochs 1,2,3] [--shards 4] [--run-dir DIR]
#                     [--no-prep] [--set key=value ...]
#
# Prints the job ids and the run dir as key=value lines. Site settings come from env.sh.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export PRONLORA_ROOT=${PRONLORA_ROOT:-$(dirname "$here")}
# shellcheck source=lib/common.sh
source "$here/lib/common.sh"

usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
config="" epochs="" shards=1 run_dir="" prep=1 overrides=()
while [ $# -gt 0 ]; do
    case "$1" in
        --config) config=$2; shift 2 ;;
        --epochs) epochs=$2; shift 2 ;;
        --shards) shards=$2; shift 2 ;;
        --run-dir) run_dir=$2; shift 2 ;;
        --no-prep) prep=0; shift ;;
        --set) overrides+=("$2"); shift 2 ;;
        -h|--help) usage 0 ;;
        *) echo "error: unknown argument $1" >&2; usage 2 ;;
    esac
done
[ -n "$config" ] || { echo "error: --config is required" >&2; usage 2; }
[[ "$shards" =~ ^[1-9][0-9]*$ ]] || { echo "error: --shards must be a positive integer" >&2; exit 2; }

# Validate the config (and overrides) before anything is queued; learn its epoch count.
n_epochs=$(run_py -c 'import sys
from pronlora.config import ConfigError, load_config
try:
    print(load_config(sys.argv[1], sys.argv[2:]).epochs)
except ConfigError as exc:
    sys.exit(f"error: {exc}")' "$config" "${overrides[@]}")
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
mkdir -p "$run_dir/logs"
run_dir=$(cd "$run_dir" && pwd)
export PRONLORA_RUN_DIR=$run_dir PRONLORA_TRAIN_CONFIG=$config PRONLORA_CHECKPOINTS=$checkpoints \
    PRONLORA_SHARDS=$shards PRONLORA_TRAIN_OVERRIDES="${overrides[*]:-}"

common=(--parsable --chdir="$PRONLORA_ROOT")
resources=(--cpus-per-task="$PRONLORA_CPUS_PER_TASK")
[ -n "$PRONLORA_MEM" ] && resources+=(--mem="$PRONLORA_MEM")
gpu=()
[ -n "$PRONLORA_GRES" ] && gpu=(--gres="$PRONLORA_GRES")
after() { if [ -n "$1" ]; then echo "--dependency=afterok:$1"; fi; }

prep_job=""
if [ "$prep" -eq 1 ]; then
    prep_job=$(sbatch "${common[@]}" --time="$PRONLORA_TIME_PREP" \
        --output="$run_dir/logs/%x-%j.out" "$PRONLORA_ROOT/slurm/prep.sbatch")
fi
# shellcheck disable=SC2046  # after prints one option or nothing
train_job=$(sbatch "${common[@]}" "${resources[@]}" "${gpu[@]}" $(after "$prep_job") \
    --time="$PRONLORA_TIME_TRAIN" --signal=B:USR1@"$PRONLORA_SIGNAL_GRACE_S" \
    --job-name="pronlora-train-$(basename "$config" .yaml)" \
    --output="$run_dir/logs/%x-%j.out" "$PRONLORA_ROOT/slurm/train.sbatch")
infer_job=$(sbatch "${common[@]}" "${resources[@]}" "${gpu[@]}" --dependency=afterok:"$train_job" \
    --time="$PRONLORA_TIME_INFER" --array=0-$(( n_ckpt * shards - 1 )) \
    --output="$run_dir/logs/%x-%A_%a.out" "$PRONLORA_ROOT/slurm/infer.sbatch")
collect_job=$(sbatch "${common[@]}" --dependency=afterok:"$infer_job" \
    --time="$PRONLORA_TIME_COLLECT" --output="$run_dir/logs/%x-%j.out" \
    "$PRONLORA_ROOT/slurm/collect.sbatch")

echo "run_dir=$run_dir"
echo "prep_job=${prep_job:-none}"
echo "train_job=$train_job"
echo "infer_job=$infer_job (array of $n_ckpt checkpoint(s) x $shards shard(s): $checkpoints)"
echo "collect_job=$collect_job"
echo "report=$run_dir/report/report.md"
