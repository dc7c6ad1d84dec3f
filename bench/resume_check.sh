#!/usr/bin/env bash
# GPU check of stop -> resume under an engine: a run stopped by the stop file after step 1 and
# resumed to step 3 must log the losses of an uninterrupted 3-step run, up to the run-to-run
# noise of GPU kernels, which a second uninterrupted run measures.
#   bench/resume_check.sh [--procs A,B] MODEL_DIR OUT_DIR [key=value overrides ...]
# --procs A,B: the uninterrupted runs and the stopped one use A processes (GPUs), the resumed
# part B (a ZeRO-2 checkpoint of A ranks then loads in DeepSpeed's universal form).
set -euo pipefail
procs=1,1
if [ "${1:-}" = "--procs" ]; then
    procs=$2
    shift 2
fi
first=${procs%,*} then=${procs#*,}
model=$1 out=$2
shift 2
work=$(mktemp -d)
python3 -c "import sys; from pathlib import Path; from pronlora.devtools.bench import make_bench_data
make_bench_data(Path(sys.argv[1]), Path('bench/mini_durations.json'), 128)" "$work/prepared"
train() {
    local n=$1
    shift
    python3 -m torch.distributed.run --nproc-per-node="$n" jobs/train.py --config paper_r64 \
        --prepared "$work/prepared" --model "$model" "$@"
}
common=(max_steps=3 logging_steps=1 save_steps=1000000 "$@")
mkdir -p "$out"
keep() {  # each run's log as soon as it is written: a run cut short keeps the earlier ones
    cp "$work/$1/train_log.jsonl" "$out/resume-check-$1.jsonl"
}
train "$first" --run-dir "$work/straight" "${common[@]}" && keep straight
train "$first" --run-dir "$work/again" "${common[@]}" && keep again
mkdir -p "$work/resumed" && touch "$work/stop"
train "$first" --run-dir "$work/resumed" --stop-file "$work/stop" \
    --requeue-marker "$work/requeue.json" "${common[@]}"
rm "$work/stop"
train "$then" --run-dir "$work/resumed" "${common[@]}" && keep resumed
python3 - "$work" <<'PY'
import json, sys
from pathlib import Path
logs = {r: [json.loads(l) for l in (Path(sys.argv[1]) / r / "train_log.jsonl").open()]
        for r in ("straight", "again", "resumed")}
loss = {r: {e["step"]: e["loss"] for e in v if "loss" in e} for r, v in logs.items()}
for r in loss:
    print(f"{r:9}", loss[r])
PY
