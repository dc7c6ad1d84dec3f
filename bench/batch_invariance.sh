#!/usr/bin/env bash
# Issue 24 on one GPU: answers and clip embeddings at infer.batch_size 256 vs 8, before (the
# stage as of BEFORE_SRC, a checkout's src/ where decode batches embedded their own audio) and
# now. A run of CONFIG trained one epoch on TRAIN_UTTS bench clips decodes the first UTTS of
# them (2 x UTTS instances).
#   bench/batch_invariance.sh MODEL_DIR OUT_DIR BEFORE_SRC [CONFIG [UTTS [TRAIN_UTTS [key=value...]]]]
# Writes OUT_DIR/{answers,embeddings,times}.json, train.log and infer.log.
set -euo pipefail
model=$1 out=$2 before=$3 config=${4:-paper_r64} utts=${5:-256} train_utts=${6:-1024}
shift $(($# < 6 ? $# : 6))
overrides=("$@")
mkdir -p "$out"
work=${WORK:-$(mktemp -d)}
now=$(pwd)/src${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
# the same seed draws the same first clips: the test dir holds the first $utts trained on
for what in "prepared:$train_utts" "test-prepared:$utts"; do
    PYTHONPATH=$now python3 -c "import sys; from pathlib import Path; from pronlora.devtools.bench import make_bench_data
make_bench_data(Path(sys.argv[1]), Path('bench/mini_durations.json'), int(sys.argv[2]))" \
        "$work/${what%%:*}" "${what#*:}"
done
t=$(date +%s.%N)
PYTHONPATH=$now python3 jobs/train.py --config "$config" --prepared "$work/prepared" \
    --model "$model" --run-dir "$work/run" epochs=1 "${overrides[@]}" > "$out/train.log" 2>&1
echo "{\"train_s\": $(python3 -c "print(round($(date +%s.%N) - $t, 1))")" > "$out/times.json"
decode() {  # NAME SRC BATCH_SIZE SHARDS
    local dir=$work/$1
    mkdir -p "$dir"
    cp "$work/run/run.json" "$dir/"
    cp -al "$work/run/checkpoints" "$dir/"
    python3 - "$dir/run.json" "$3" <<'PY'
import json, sys
p, b = sys.argv[1], int(sys.argv[2])
d = json.load(open(p)); d["config"]["infer"]["batch_size"] = b; json.dump(d, open(p, "w"))
PY
    local t0
    t0=$(date +%s.%N)
    PYTHONPATH=$2 python3 "${2%%:*}/../jobs/infer.py" --run-dir "$dir" --checkpoint epoch-1 \
        --prepared "$work/test-prepared" --num-shards "$4" > "$work/infer-$1.log" 2>&1
    { echo "== $1"; grep -v "Loading weights" "$work/infer-$1.log"; } >> "$out/infer.log"
    echo ", \"$1_s\": $(python3 -c "print(round($(date +%s.%N) - $t0, 1))")" >> "$out/times.json"
}
before=$before${PYTHONPATH:+:$PYTHONPATH}
decode before-256 "$before" 256 1
decode before-8 "$before" 8 1
decode now-256 "$now" 256 1
decode now-8 "$now" 8 1
decode now-256-3shards "$now" 256 3
echo "}" >> "$out/times.json"
p=predictions/epoch-1
PYTHONPATH=$now python3 bench/batch_invariance.py answers --out "$out/answers.json" \
    "before-256=$work/before-256/$p" "before-8=$work/before-8/$p" "now-256=$work/now-256/$p" \
    "now-8=$work/now-8/$p" "now-256-3shards=$work/now-256-3shards/$p" > /dev/null
PYTHONPATH=$now python3 bench/batch_invariance.py embeddings --run-dir "$work/run" \
    --prepared "$work/test-prepared" --out "$out/embeddings.json" > /dev/null
cat "$out/times.json" "$out/answers.json" "$out/embeddings.json"
