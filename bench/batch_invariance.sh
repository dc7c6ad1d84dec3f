#!/usr/bin/env bash
# Issue 24 on one GPU: answers and clip embeddings vs the way inference is batched. A run of
# CONFIG trained one epoch on TRAIN_UTTS bench clips decodes the first UTTS of them (2 x UTTS
# instances) once per decode spec, only infer.batch_size and the shard count changed.
#   bench/batch_invariance.sh MODEL_DIR OUT_DIR BEFORE_SRC [CONFIG [UTTS [TRAIN_UTTS [key=value...]]]]
# DECODES (env): space-separated NAME:SRC:BATCH_SIZE:SHARDS[:SET] specs. SRC is "now" (this
# checkout's src/) or "before" (BEFORE_SRC, a checkout's src/ where decode batches embedded their
# own audio); every shard runs as its own process, as Slurm array tasks do. SET "small" decodes
# the first SMALL_UTTS (env, default 32) clips instead (for slow settings such as batch 1).
# Writes OUT_DIR/{answers,embeddings,times}.json, train.log and infer.log.
set -euo pipefail
model=$1 out=$2 before=$3 config=${4:-paper_r64} utts=${5:-256} train_utts=${6:-1024}
shift $(($# < 6 ? $# : 6))
overrides=("$@")
decodes=${DECODES:-before-256:before:256:1 before-8:before:8:1 now-256:now:256:1 now-8:now:8:1 now-256-3shards:now:256:3}
mkdir -p "$out"
work=${WORK:-$(mktemp -d)}
now=$(pwd)/src${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
# the same seed draws the same first clips: the test dirs hold the first clips trained on
for what in "prepared:$train_utts" "test-prepared:$utts" "small-prepared:${SMALL_UTTS:-32}"; do
    PYTHONPATH=$now python3 -c "import sys; from pathlib import Path; from pronlora.devtools.bench import make_bench_data
make_bench_data(Path(sys.argv[1]), Path('bench/mini_durations.json'), int(sys.argv[2]))" \
        "$work/${what%%:*}" "${what#*:}"
done
t=$(date +%s.%N)
PYTHONPATH=$now python3 jobs/train.py --config "$config" --prepared "$work/prepared" \
    --model "$model" --run-dir "$work/run" epochs=1 "${overrides[@]}" > "$out/train.log" 2>&1
echo "{\"train_s\": $(python3 -c "print(round($(date +%s.%N) - $t, 1))")" > "$out/times.json"
decode() {  # NAME SRC BATCH_SIZE SHARDS SET
    local dir=$work/$1 data=$work/test-prepared
    [[ $5 == small ]] && data=$work/small-prepared
    mkdir -p "$dir"
    cp "$work/run/run.json" "$dir/"
    cp -al "$work/run/checkpoints" "$dir/"
    python3 - "$dir/run.json" "$3" <<'PY'
import json, sys
p, b = sys.argv[1], int(sys.argv[2])
d = json.load(open(p)); d["config"]["infer"]["batch_size"] = b; json.dump(d, open(p, "w"))
PY
    local t0 shard extra=()
    [[ $2 == "$now" ]] && extra=(--other-data)  # the test sets are a part of the training set
    t0=$(date +%s.%N)
    for ((shard = 0; shard < $4; shard++)); do
        PYTHONPATH=$2 python3 "${2%%:*}/../jobs/infer.py" --run-dir "$dir" --checkpoint epoch-1 \
            --prepared "$data" "${extra[@]}" --shard "$shard" --num-shards "$4" \
            >> "$work/infer-$1.log" 2>&1
    done
    { echo "== $1"; grep -v "Loading weights" "$work/infer-$1.log"; } >> "$out/infer.log"
    echo ", \"$1_s\": $(python3 -c "print(round($(date +%s.%N) - $t0, 1))")" >> "$out/times.json"
}
before=$before${PYTHONPATH:+:$PYTHONPATH}
pairs=()
for spec in $decodes; do
    IFS=: read -r name src batch shards set <<< "$spec"
    [[ $src == now ]] && src=$now || src=$before
    decode "$name" "$src" "$batch" "$shards" "${set:-test}"
    pairs+=("$name=$work/$name/predictions/epoch-1")
done
echo "}" >> "$out/times.json"
PYTHONPATH=$now python3 bench/batch_invariance.py answers --out "$out/answers.json" \
    "${pairs[@]}" > /dev/null
PYTHONPATH=$now python3 bench/batch_invariance.py embeddings --run-dir "$work/run" \
    --prepared "$work/test-prepared" --out "$out/embeddings.json" > /dev/null
cat "$out/times.json" "$out/answers.json" "$out/embeddings.json"
