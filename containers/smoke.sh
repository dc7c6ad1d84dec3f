#!/usr/bin/env bash
# The image's self-test on a GPU (its %test; or by hand: bash containers/smoke.sh [WORK_DIR]):
# the versions of containers/torch-pin.txt, then every stage through its entry point on a tiny
# random checkpoint and a synthetic corpus: prep, a few bf16 and nf4 LoRA training steps, decodes
# of both runs, one collect. Minutes, not hours; its numbers mean nothing.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=${1:-$(mktemp -d)}
py=${PYTHON:-python3}
cd "$root"
export PYTHONPATH=$root/src${PYTHONPATH:+:$PYTHONPATH}
$py - "$root/containers/torch-pin.txt" <<'PY'
import importlib, os, sys
import torch
pin = next(line.split("==")[1].strip() for line in open(sys.argv[1]) if line.startswith("torch=="))
assert torch.__version__.split("+")[0] == pin, f"torch {torch.__version__}, pinned {pin}"
assert torch.cuda.is_available(), "no GPU visible (apptainer test --nv, on a GPU node)"
missing = []
for name in ("transformers", "peft", "accelerate", "bitsandbytes", "deepspeed", "flash_attn",
             "soundfile", "submitit", "jiwer", "pronlora.train.recipe", "pronlora.infer.stage"):
    try:
        importlib.import_module(name)
    except ImportError as exc:
        missing.append(f"{name} ({exc})")
may_lack = tuple(os.environ.get("SMOKE_MAY_LACK", "").split())  # outside the image only
if any(not m.startswith(may_lack) or not may_lack for m in missing):
    sys.exit("cannot import: " + ", ".join(missing))
# Inside the image (read-only where it runs) the packages must carry their bytecode, as pip
# writes it at install: a job that compiles its imports from source pays seconds for it (2,397
# modules in one training job on an H100 whose environment had none, ...-second-job-startup.md).
if sys.prefix == "/opt/venv":
    from importlib.util import cache_from_source
    probes = ("transformers.trainer", "peft.tuners.lora.model", "torch._dynamo.symbolic_convert")
    uncompiled = [
        name for name in probes
        if not os.path.exists(cache_from_source(importlib.import_module(name).__file__))
    ]
    assert not uncompiled, f"no bytecode for {uncompiled}: rebuild without PIP_NO_COMPILE"
print("torch", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name(0),
      "| not importable here:", ", ".join(missing) or "none")
PY
$py jobs/make_demo_corpus.py --out "$work/corpus" --utterances 8
$py jobs/make_random_checkpoint.py --size tiny --out "$work/model" > /dev/null
$py jobs/prep.py --source kaldi --data "$work/corpus" --out "$work/prepared"
for quant in bf16 nf4; do
    $py jobs/train.py --config smoke --prepared "$work/prepared" --model "$work/model" \
        --run-dir "$work/run-$quant" epochs=1 dtype=bf16 "quantization=$quant"
    $py jobs/infer.py --run-dir "$work/run-$quant" --checkpoint base,epoch-1 \
        --prepared "$work/prepared"
done
# nf4 weights cannot take a merged adapter, so the two runs decode under different settings
$py jobs/collect.py --prepared "$work/prepared" --runs "$work/run-bf16" "$work/run-nf4" \
    --allow-mixed-decoding --out "$work/report"
test -s "$work/report/report.md"
echo "smoke OK: $work"
