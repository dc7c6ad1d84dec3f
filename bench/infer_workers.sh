#!/usr/bin/env bash
# Inference stage on 1 and on N workers (one GPU each, started as slurm/infer.sbatch starts
# them): wall time, instances/s per GPU, and that N workers decode exactly the ids of one.
#   bench/infer_workers.sh MODEL_DIR OUT_DIR N [CONFIG [UTTERANCES]]
# Writes OUT_DIR/infer-workers.json. The grid is base x 4 shards of the bench's test split
# (2 x UTTERANCES instances); random weights decode to the length caps.
set -euo pipefail
model=$1 out=$2 n=$3 config=${4:-paper_r64} utts=${5:-256}
work=$(mktemp -d)
python3 -c "import sys; from pathlib import Path; from pronlora.devtools.bench import make_bench_data
make_bench_data(Path(sys.argv[1]), Path('bench/mini_durations.json'), int(sys.argv[2]))" \
    "$work/prepared" "$utts"
common=(--checkpoint base --prepared "$work/prepared" --num-shards 4 --config "$config" --model "$model")
t0=$(date +%s.%N)
CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-0} python3 jobs/infer.py --run-dir "$work/one" "${common[@]}"
t1=$(date +%s.%N)
pids=()
for ((i = 0; i < n; i++)); do
    CUDA_VISIBLE_DEVICES=$i python3 jobs/infer.py --run-dir "$work/many" "${common[@]}" \
        --gpus-per-task "$n" --local-worker "$i" &
    pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
t2=$(date +%s.%N)
mkdir -p "$out"
python3 - "$work" "$n" "$t0" "$t1" "$t2" > "$out/infer-workers.json" <<'PY'
import json, sys
from pathlib import Path
work, n = Path(sys.argv[1]), int(sys.argv[2])
t0, t1, t2 = map(float, sys.argv[3:])
def ids(run):
    out = []
    for f in sorted(run.rglob("shard-*.jsonl")):
        out += [json.loads(line)["id"] for line in f.read_bytes().split(b"\n") if line.strip()]
    return out
one, many = ids(work / "one"), ids(work / "many")
r = {"workers": n, "instances": len(one), "one_worker_wall_s": round(t1 - t0, 1),
     "workers_wall_s": round(t2 - t1, 1), "workers_instances": len(many),
     "workers_duplicates": len(many) - len(set(many)), "same_ids": sorted(one) == sorted(many)}
r["speedup"] = round(r["one_worker_wall_s"] / r["workers_wall_s"], 2)
r["inst_per_s_per_gpu"] = {"1": round(len(one) / r["one_worker_wall_s"], 2),
                           str(n): round(len(many) / r["workers_wall_s"] / n, 2)}
print(json.dumps(r))
PY
cat "$out/infer-workers.json"
rm -rf "$work"
