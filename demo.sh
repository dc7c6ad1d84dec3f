#!/usr/bin/env bash
# The whole pipeline on this machine's CPU in a few minutes: a SYNTHETIC corpus and a tiny
# RANDOM-WEIGHT Phi-4-multimodal, prep -> train -> infer -> collect. Every number it prints is
# meaningless; it shows that the stages run and connect. Output under ./demo/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
bash tools/install.sh
py=.venv/bin/python
out=${DEMO_DIR:-demo}
mkdir -p "$out"
$py jobs/make_demo_corpus.py --out "$out/corpus" --utterances 24
$py jobs/prep.py --source kaldi --data "$out/corpus" --out "$out/prepared"
[ -f "$out/model/config.json" ] || $py jobs/make_random_checkpoint.py --size tiny --out "$out/model"
$py jobs/train.py --config smoke --prepared "$out/prepared" --model "$out/model" --run-dir "$out/run"
for ckpt in base epoch-1 epoch-2; do
    $py jobs/infer.py --run-dir "$out/run" --checkpoint "$ckpt" --prepared "$out/prepared"
done
$py jobs/collect.py --prepared "$out/prepared" --runs "$out/run" --out "$out/report"
echo
echo "DEMO ONLY: synthetic audio and a random-weight model; the numbers above mean nothing."
