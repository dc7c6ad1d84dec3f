#!/usr/bin/env python3
"""Stage 3: greedy predictions for one shard of a split, for one checkpoint (or the base model).

As a Slurm array task, omit --shard: SLURM_ARRAY_TASK_ID picks (checkpoint, shard) from the
grid of --checkpoint (comma-separated) x --num-shards.
"""

from __future__ import annotations

import argparse
import os

from pronlora.cli import run_job
from pronlora.collate import SequenceTooLongError
from pronlora.config import ConfigError
from pronlora.infer import array_task, run_shard


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--checkpoint", required=True, help="epoch-N, base, or a comma list for arrays")
    ap.add_argument("--prepared", required=True)
    ap.add_argument("--split", default="test", choices=["train", "test"])
    ap.add_argument("--shard", type=int, default=None)
    ap.add_argument("--num-shards", type=int, default=1)
    ap.add_argument("--config", help="config name, only for a run dir without run.json")
    ap.add_argument("--model", help="snapshot dir, only for a run dir without run.json")
    args = ap.parse_args()
    if args.num_shards < 1:
        raise ConfigError("--num-shards must be >= 1")
    checkpoints = [c.strip() for c in args.checkpoint.split(",") if c.strip()]
    if args.shard is None and "SLURM_ARRAY_TASK_ID" in os.environ:
        checkpoint, shard = array_task(
            checkpoints, args.num_shards, int(os.environ["SLURM_ARRAY_TASK_ID"])
        )
    elif len(checkpoints) == 1:
        checkpoint, shard = checkpoints[0], args.shard or 0
    else:
        raise ConfigError("several --checkpoint values need SLURM_ARRAY_TASK_ID (an array job)")
    summary = run_shard(
        args.run_dir,
        checkpoint,
        args.prepared,
        args.split,
        shard,
        args.num_shards,
        args.config,
        args.model,
    )
    print(f"shard {shard}/{args.num_shards} of {checkpoint}: {summary['by_task']}")
    return 0


if __name__ == "__main__":
    run_job(main, (ConfigError, SequenceTooLongError, FileNotFoundError))
