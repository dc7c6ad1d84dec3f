#!/usr/bin/env bash
# Measured job costs (issue 25): each COMBO (config:strategy:quantization) trains one epoch on
# TRAIN_UTTS bench clips (real SpeechOcean762-mini durations) through jobs/train.py and decodes
# UTTS of them as jobs/infer.py does, each answer forced to its real target's token count
# (bench/infer_real_lengths.py: answers of a one-epoch model on random weights have no real
# length), then LARGE_UTTS of them in another process (the difference gives the seconds per
# instance, so that first-batch warm-up counts as one-time). Each decode job decodes the
# checkpoints base then epoch-1, as a worker of jobs/infer.py does (epoch-1 swapped into the
# loaded model): the second gives the cost of each next checkpoint of a worker.
# bench/rates.py turns each job's wall time and logs into one-time seconds plus seconds per
# instance, one JSON line per combo in OUT_DIR/rates.jsonl.
#   bench/rates.sh MODEL_DIR OUT_DIR COMBO [COMBO...]
# env: TRAIN_UTTS (default 256), UTTS (512: two full decode batches of 256 per task),
# LARGE_UTTS (1536), WORK
# (scratch dir), ALONE=1 also decodes the first combo's checkpoint with
# infer.clips_per_encoder_batch=1 (each clip embedded alone), FRESH=1 decodes each combo's
# epoch-1 in a process of its own and compares its answers with the swapped-in epoch-1's
# (OUT_DIR/COMBO-fresh-answers.json).
set -euo pipefail
model=$1 out=$2
shift 2
mkdir -p "$out"
work=${WORK:-$(mktemp -d)}
PYTHONPATH=$(pwd)/src${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 PYTHONPATH
for what in "prepared:${TRAIN_UTTS:-256}" "test-prepared:${UTTS:-512}" \
    "test-large:${LARGE_UTTS:-1536}"; do
    python3 -c "import sys; from pathlib import Path; from pronlora.devtools.bench import make_bench_data
make_bench_data(Path(sys.argv[1]), Path('bench/mini_durations.json'), int(sys.argv[2]))" \
        "$work/${what%%:*}" "${what#*:}"
done
copy_run() {  # a run dir's settings and checkpoints (hard links), for another decode job
    mkdir -p "$2" && cp "$1/run.json" "$2/" && cp -al "$1/checkpoints" "$2/"
}
decode_alone() {  # the first combo's checkpoint again, each clip embedded alone
    local first=$1
    alone=$work/alone
    copy_run "$first" "$alone"
    python3 - "$alone/run.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); d["config"]["infer"]["clips_per_encoder_batch"] = 1
json.dump(d, open(sys.argv[1], "w"))
PY
    t0=$(date +%s.%N)
    python3 jobs/infer.py --run-dir "$alone" --checkpoint epoch-1 --prepared "$work/test-prepared" \
        --other-data > "$work/alone-infer.log" 2>&1
    echo "{\"alone_wall_s\": $(seconds_since "$t0")}" > "$out/alone.json"
    p=predictions/epoch-1
    python3 bench/batch_invariance.py answers --out "$out/alone-answers.json" \
        "group16=$first/$p" "alone=$alone/$p" > /dev/null
    cp "$first/$p/shard-0-of-1.done.json" "$out/group16-done.json"
    cp "$alone/$p/shard-0-of-1.done.json" "$out/alone-done.json"
}
seconds_since() { python3 -c "import sys, time; print(round(time.time() - float(sys.argv[1]), 1))" "$1"; }
first=
for combo in "$@"; do
    IFS=: read -r config strategy quant <<< "$combo"
    name=$config-$strategy-$quant run=$work/$config-$strategy-$quant
    train=(python3 jobs/train.py --config "$config" --prepared "$work/prepared" --model "$model"
        --run-dir "$run" epochs=1 "strategy=$strategy" "quantization=$quant" logging_steps=1)
    infer=(python3 bench/infer_real_lengths.py --run-dir "$run" --checkpoint "base,epoch-1"
        --prepared "$work/test-prepared")
    t0=$(date +%s.%N)
    if ! "${train[@]}" > "$work/$name-train.log" 2>&1; then
        { echo "== $combo: training failed"; tail -30 "$work/$name-train.log"; } >> "$out/errors.log"
        continue
    fi
    train_s=$(seconds_since "$t0")
    t0=$(date +%s.%N)
    if ! "${infer[@]}" > "$work/$name-infer.log" 2>&1; then
        { echo "== $combo: decoding failed"; tail -30 "$work/$name-infer.log"; } >> "$out/errors.log"
        continue
    fi
    infer_s=$(seconds_since "$t0")
    # the same checkpoint decoding more instances (another process): the slope between them
    copy_run "$run" "$run-large"
    if ! python3 bench/infer_real_lengths.py --run-dir "$run-large" --checkpoint "base,epoch-1" \
        --prepared "$work/test-large" > "$work/$name-infer-large.log" 2>&1; then
        { echo "== $combo: the large decode failed"; tail -30 "$work/$name-infer-large.log"; } \
            >> "$out/errors.log"
        continue
    fi
    python3 bench/rates.py record --combo "$combo" --run-dir "$run" --train-wall "$train_s" \
        --infer-wall "$infer_s" --train-command "${train[*]}" --infer-command "${infer[*]}" \
        --infer-large-run-dir "$run-large" --checkpoints "base,epoch-1" >> "$out/rates.jsonl"
    tail -1 "$out/rates.jsonl"
    if [[ ${FRESH:-} == 1 ]]; then  # epoch-1 loaded afresh: the same answers as swapped in
        copy_run "$run" "$run-fresh"
        python3 bench/infer_real_lengths.py --run-dir "$run-fresh" --checkpoint epoch-1 \
            --prepared "$work/test-prepared" > "$work/$name-infer-fresh.log" 2>&1
        python3 bench/batch_invariance.py answers --out "$out/$name-fresh-answers.json" \
            "swapped=$run/predictions/epoch-1" "fresh=$run-fresh/predictions/epoch-1" > /dev/null
        cat "$out/$name-fresh-answers.json"
    fi
    if [[ ${ALONE:-} == 1 && -z $first ]]; then
        first=$run
        decode_alone "$first"
    fi
done
