#!/usr/bin/env python3
"""Stage 3: greedy predictions for shards of a split, for checkpoints (or the base model).

The work is the grid --checkpoint (comma list) x --num-shards. Each worker (one GPU) decodes
its share, a contiguous block of the grid, loading each checkpoint once: worker = array task
x --gpus-per-task + --local-worker, out of array tasks x --gpus-per-task workers
(SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT; one task when not an array). --shard decodes
one shard of one checkpoint instead.
"""

from __future__ import annotations

import argparse
import math
import os

from pronlora.core.cli import run_job
from pronlora.core.config import ConfigError
from pronlora.core.decode_grid import worker_items
from pronlora.core.lean_imports import keep_out, run_quantization, unused_packages
from pronlora.infer.inputs import check_decode_inputs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--checkpoint", required=True, help="epoch-N, base, or a comma list")
    ap.add_argument("--prepared", required=True)
    ap.add_argument("--split", default="test", choices=["train", "test"])
    ap.add_argument("--shard", type=int, default=None)
    ap.add_argument("--num-shards", type=int, default=1)
    ap.add_argument("--gpus-per-task", type=int, default=1, help="workers per job/array task")
    ap.add_argument("--local-worker", type=int, default=0, help="this worker's GPU in its task")
    ap.add_argument("--config", help="config name, only for a run dir without run.json")
    ap.add_argument("--model", help="snapshot dir, only for a run dir without run.json")
    ap.add_argument(
        "--other-data",
        action="store_true",
        help="decode a prepared dir other than the one the run was trained on",
    )
    args = ap.parse_args()
    if args.num_shards < 1 or args.gpus_per_task < 1:
        raise ConfigError("--num-shards and --gpus-per-task must be >= 1")
    if not 0 <= args.local_worker < args.gpus_per_task:
        raise ConfigError(f"--local-worker {args.local_worker} outside 0..{args.gpus_per_task - 1}")
    checkpoints = [c.strip() for c in args.checkpoint.split(",") if c.strip()]
    if args.shard is not None:
        if len(checkpoints) != 1:
            raise ConfigError("--shard decodes one checkpoint; give a single --checkpoint")
        items = [(checkpoints[0], args.shard)]
    else:
        grid = len(checkpoints) * args.num_shards
        task = int(os.environ.get("SLURM_ARRAY_TASK_ID", "0"))
        tasks = int(
            os.environ.get("SLURM_ARRAY_TASK_COUNT")
            or (math.ceil(grid / args.gpus_per_task) if "SLURM_ARRAY_TASK_ID" in os.environ else 1)
        )
        workers = tasks * args.gpus_per_task
        worker = task * args.gpus_per_task + args.local_worker
        items = worker_items(checkpoints, args.num_shards, worker, workers)
    # every item refused before torch is imported and before the first item is decoded
    check_decode_inputs(
        args.run_dir,
        items,
        args.num_shards,
        args.prepared,
        args.split,
        other_data=args.other_data,
        config_and_model_given=args.config is not None and args.model is not None,
    )
    keep_out(unused_packages(run_quantization(args.run_dir, args.config)))
    from pronlora.infer.models import Models
    from pronlora.infer.stage import run_shard

    models = Models(swap=len({c for c, _ in items}) > 1)  # one load for all items
    for checkpoint, shard in items:
        summary = run_shard(
            args.run_dir,
            checkpoint,
            args.prepared,
            args.split,
            shard,
            args.num_shards,
            args.config,
            args.model,
            models,
            other_data=args.other_data,
        )
        print(f"shard {shard}/{args.num_shards} of {checkpoint}: {summary['by_task']}")
    if not items:
        print("nothing for this worker: more workers than checkpoints x shards")
    else:
        print(f"model loads: {models.loads}, checkpoints swapped in: {models.swaps}")
    return 0


if __name__ == "__main__":
    run_job(main, (FileNotFoundError,))
