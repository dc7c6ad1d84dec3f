#!/usr/bin/env bash
# The Table 3 grid on this machine's GPU through the lab's entry point (issue 25):
# jobs/submit.py --experiment table3 --executor local, one seed, on CORPUS (a corpus in the
# official layout, e.g. ../shared/speechocean762-mini) and MODEL_DIR. Writes to OUT_DIR the plan
# with its estimate (plan.txt), each job's wall time (job_times.jsonl, appended as jobs finish),
# submit.log and the Table 3 the collector wrote.
#   bench/grid_on_gpu.sh MODEL_DIR CORPUS OUT_DIR [jobs/submit.py args, e.g. --set epochs=2]
set -euo pipefail
model=$1 corpus=$2 out=$3
shift 3
mkdir -p "$out"
work=${WORK:-$(mktemp -d)}
PYTHONPATH=$(pwd)/src${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 PYTHONPATH
export PRONLORA_DATA=$corpus PRONLORA_PREPARED=$work/prepared PRONLORA_MODEL=$model \
    PRONLORA_RUNS=$work/runs PRONLORA_CACHE=$work/cache PRONLORA_GPUS_PER_NODE=1 \
    PRONLORA_NODES=1 PRONLORA_PYTHON=python3
submit=(python3 jobs/submit.py --experiment table3 --executor local --run-dir "$work/table3" "$@")
"${submit[@]}" --dry-run > "$out/plan.txt"
echo "command: ${submit[*]}" >> "$out/plan.txt"
t0=$(date +%s)
rc=0
"${submit[@]}" > "$out/submit.log" 2>&1 || rc=$?
echo "grid wall: $(($(date +%s) - t0)) s, exit $rc" >> "$out/submit.log"
cp "$work/table3/job_times.jsonl" "$out/" 2>/dev/null || true
cp "$work/table3/report/table3.md" "$out/" 2>/dev/null || true
exit $rc
