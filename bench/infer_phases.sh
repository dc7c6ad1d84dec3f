#!/usr/bin/env bash
# Where a decode's GPU time goes (bench/infer_phases.py), one process per setting, each on its
# own load: the shipped paper_r64 settings, then each VARIANT (a config override, key=value).
# One JSON line and a table per setting in OUT_DIR/phases-N.log, a line per setting in
# OUT_DIR/summary.txt as it goes (device calls may end early).
#   bench/infer_phases.sh MODEL_DIR OUT_DIR [VARIANT...]
# env: UTTS (default 512: two decode batches of 256 per task), CONFIG (paper_r64)
set -uo pipefail
model=$1 out=$2
shift 2
mkdir -p "$out"
PYTHONPATH=$(pwd)/src${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 PYTHONPATH
n=0
for setting in "" "$@"; do
    args=(--model "$model" --config "${CONFIG:-paper_r64}" --utterances "${UTTS:-512}")
    [ -n "$setting" ] && args+=(--set "$setting")
    start=$(date +%s)
    python3 bench/infer_phases.py "${args[@]}" > "$out/phases-$n.log" 2>&1
    rc=$?
    echo "${setting:-shipped}: exit $rc, $(( $(date +%s) - start )) s" >> "$out/summary.txt"
    grep -E '^\||^pass ' "$out/phases-$n.log" >> "$out/summary.txt"
    n=$((n + 1))
done
