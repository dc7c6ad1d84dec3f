#!/usr/bin/env bash
# The fast tests once more with the newest transformers, peft and accelerate tested
# (tests/upper-versions.txt) in ./.venv-upper: the image pins the lower end, a lab's own
# `pip install` gets the upper end, and transformers renames arguments between 5.x releases.
# .ci/run calls it after the full suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv-upper/bin/python ]; then
    "$PY" -m venv .venv-upper
fi
# torch first: 2.13.0 resolves to the local CPU build; any other spec pulls GBs of CUDA wheels.
.venv-upper/bin/pip install -q torch==2.13.0
.venv-upper/bin/pip install -q -e '.[test]' -r tests/upper-versions.txt
.venv-upper/bin/python -c "import transformers, peft, accelerate
print('upper versions: transformers', transformers.__version__, 'peft', peft.__version__,
      'accelerate', accelerate.__version__)"
# without the Slurm tests: they run the same job code through sbatch, and took 6 of this run's
# 10 minutes (CI, 2026-12-07)
env -u PRONLORA_SLURM_TESTS .venv-upper/bin/python -m pytest -q -ra -m "not slow" -n 3 \
    --dist loadfile "$@"
