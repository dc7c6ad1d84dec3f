#!/usr/bin/env bash
# The paper's Table 3 grid on this machine's CPU in a few minutes: a SYNTHETIC corpus and a tiny
# RANDOM-WEIGHT Phi-4-multimodal; prep -> train (LoRA-only and Unfreeze, the smoke recipe, 2
# epochs) -> infer (base once, every epoch) -> one collect with intervals, through the same
# launch plan as a cluster run (jobs/submit.py --experiment table3 --executor local). Every
# number it prints is meaningless; it shows that the stages run and connect. Output under ./demo/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
bash tools/install.sh
py=.venv/bin/python
out=$(mkdir -p "${DEMO_DIR:-demo}" && cd "${DEMO_DIR:-demo}" && pwd)
$py jobs/make_demo_corpus.py --out "$out/corpus" --utterances 24
[ -f "$out/model/config.json" ] || $py jobs/make_random_checkpoint.py --size tiny --out "$out/model"
export PRONLORA_DATA="$out/corpus" PRONLORA_PREPARED="$out/prepared" PRONLORA_MODEL="$out/model" \
    PRONLORA_RUNS="$out/runs" PRONLORA_CACHE="$out/cache" PRONLORA_GRES='' PRONLORA_MEM='' \
    PRONLORA_GPUS_PER_NODE=1 PRONLORA_NODES=1
$py jobs/submit.py --experiment table3 --config smoke --set epochs=2 --executor local \
    --run-dir "$out/table3"
echo
cat "$out/table3/report/table3.md"
echo "report: $out/table3/report/report.md"
echo "DEMO ONLY: synthetic audio and a random-weight model; the numbers above mean nothing."
