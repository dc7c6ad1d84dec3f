#!/usr/bin/env bash
# GPU check that a full epoch under an engine writes its epoch checkpoint (trainer.save_model on
# every rank: ZeRO-3 gathers the partitioned adapter) and that the adapter loads back.
#   bench/epoch_check.sh [--plain] MODEL_DIR [key=value overrides ...]
# --plain: a plain `python jobs/train.py` instead of torchrun (DeepSpeed without a launcher).
set -euo pipefail
launcher=(python3 -m torch.distributed.run --nproc-per-node=1)
if [ "${1:-}" = "--plain" ]; then
    launcher=(python3)
    shift
fi
model=$1
shift
work=$(mktemp -d)
python3 -c "import sys; from pathlib import Path; from pronlora.devtools.bench import make_bench_data
make_bench_data(Path(sys.argv[1]), Path('bench/mini_durations.json'), 64)" "$work/prepared"
"${launcher[@]}" jobs/train.py --config paper_r64 \
    --prepared "$work/prepared" --model "$model" --run-dir "$work/run" epochs=1 logging_steps=1 "$@"
python3 - "$work/run/checkpoints/epoch-1" <<'PY'
import sys
from safetensors.torch import load_file
w = load_file(sys.argv[1] + "/adapter_model.safetensors")
empty = [k for k, v in w.items() if v.numel() == 0]
assert w and not empty, f"adapter has {len(w)} tensors, empty: {empty[:3]}"
print(f"epoch-1 adapter: {len(w)} tensors, {sum(v.numel() for v in w.values())} values")
PY
