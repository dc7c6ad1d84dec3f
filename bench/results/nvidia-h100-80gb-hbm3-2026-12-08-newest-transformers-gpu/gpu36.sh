#!/usr/bin/env bash
# transformers 5.25 on a GPU with use_kernels=False: decode (base) under 5.17 and 5.25, same
# answers?; a short bf16 training job under 5.25 (compiled decoder layers, as shipped).
set -uo pipefail
S=$(date +%s)
t() { echo "$(( $(date +%s) - S )) s: $*" | tee -a $OUT/summary.txt; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/machine.txt
git log --oneline -1 >> $OUT/machine.txt 2>/dev/null
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=
pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > $OUT/pip.txt 2>&1
pip install -q --no-index --no-deps --target /tmp/site525 .whl/v525/*.whl >> $OUT/pip.txt 2>&1
BASEPP=/tmp/site:$(pwd)/.whl/py:$(pwd)/src
export PYTHONPATH=$BASEPP
t "installed"
python3 jobs/make_random_checkpoint.py --size full --out /tmp/full > $OUT/mk.log 2>&1 || { t "checkpoint FAILED"; tail -20 $OUT/mk.log; }
python3 -c "from pathlib import Path; from pronlora.devtools.bench import make_bench_data
make_bench_data(Path('/tmp/test'), Path('bench/mini_durations.json'), 128)
make_bench_data(Path('/tmp/train'), Path('bench/mini_durations.json'), 64)" > $OUT/data.log 2>&1 || t "data FAILED"
t "checkpoint + data"
for v in 525 517; do
  if [ $v = 525 ]; then export PYTHONPATH=/tmp/site525:$BASEPP; else export PYTHONPATH=$BASEPP; fi
  python3 -c "import transformers, peft, accelerate, huggingface_hub; print('versions', transformers.__version__, peft.__version__, accelerate.__version__, huggingface_hub.__version__)" > $OUT/infer-v$v.log 2>&1
  a=$(date +%s)
  python3 jobs/infer.py --run-dir /tmp/r$v --checkpoint base --prepared /tmp/test --config paper_r64 --model /tmp/full >> $OUT/infer-v$v.log 2>&1
  t "infer v$v exit $? wall $(( $(date +%s) - a )) s"
done
export PYTHONPATH=$BASEPP
python3 bench/batch_invariance.py answers v517=/tmp/r517/predictions/base v525=/tmp/r525/predictions/base > $OUT/compare.txt 2>&1; t "compare exit $?"
export PYTHONPATH=/tmp/site525:$BASEPP
a=$(date +%s)
python3 jobs/train.py --config paper_r64 --prepared /tmp/train --model /tmp/full --run-dir /tmp/t525 epochs=1 max_steps=2 logging_steps=1 compile_layers=false > $OUT/train-v525.log 2>&1
t "train v525 exit $? wall $(( $(date +%s) - a )) s"
tail -5 $OUT/train-v525.log >> $OUT/summary.txt
