#!/usr/bin/env python3
"""How far an Unfreeze run moved the audio encoder and projector from the snapshot's weights.

  python bench/unfreeze_moved.py RUN_DIR LABEL SNAPSHOT

Reads the run's last saved ``unfrozen.safetensors`` and prints the share of values that changed,
the share that still differs once rounded to bf16 (what a decode loads) and the mean absolute
change, with the run's step time and peak memory. A bf16 weight does not move under steps below
half its spacing (results/nvidia-h100-80gb-hbm3-2026-12-07-unfreeze-float32.md).
"""

from __future__ import annotations

import json
import statistics
import sys
from itertools import pairwise
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file


def main() -> int:
    run, label, snapshot = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    files = sorted(run.rglob("unfrozen.safetensors"), key=lambda p: p.stat().st_mtime)
    if not files:
        print(f"{label}: no unfrozen.safetensors under {run} (not an Unfreeze run)")
        return 2
    saved = load_file(files[-1])
    initial = {}
    for path in snapshot.glob("*.safetensors"):
        with safe_open(str(path), "pt") as weights:
            names = [k for k in weights.keys() if k in saved]  # noqa: SIM118 (not a dict)
            initial |= {k: weights.get_tensor(k) for k in names}
    n = moved = moved_bf16 = 0
    change = 0.0
    for key, value in saved.items():
        if key not in initial or not value.is_floating_point():
            continue
        before, after = initial[key].float(), value.float()
        n += before.numel()
        moved += int((before != after).sum())
        moved_bf16 += int((before != value.bfloat16().float()).sum())
        change += float((before - after).abs().sum())
    steps = [json.loads(x) for x in (run / "train_log.jsonl").open() if '"loss"' in x]
    gaps = [b["time_s"] - a["time_s"] for a, b in pairwise(steps)]
    # the first gap holds compilation; a run logged every few steps may have no gap left
    gap = f"median gap {statistics.median(gaps[1:]):.3f} s" if gaps[1:] else "no step gap"
    print(
        f"{label}: {files[-1].relative_to(run)} ({next(iter(saved.values())).dtype}), "
        f"{n} of {sum(v.numel() for v in saved.values())} values compared: changed "
        f"{moved / n:.4f}, changed after bf16 rounding {moved_bf16 / n:.4f}, mean |change| "
        f"{change / n:.3e}; {len(steps)} logged steps, {gap}; "
        f"peak {max(s.get('gpu_mem_gb', 0) for s in steps)} GB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
