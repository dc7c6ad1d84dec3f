#!/usr/bin/env python3
"""Submit prep -> train -> infer (array) -> collect through submitit (Slurm or this machine).

Site settings come from env.sh (environment overrides apply). --dry-run prints the plan.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pronlora.cli import run_job
from pronlora.config import ConfigError, available
from pronlora.launch import build_plan, site_settings, submit

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", required=True, help=f"one of {available()} or a YAML path")
    ap.add_argument("--executor", choices=["slurm", "local"], default="slurm")
    ap.add_argument("--dry-run", action="store_true", help="print the plan, submit nothing")
    ap.add_argument("--epochs", help="comma list of epochs to evaluate (default: all)")
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--run-dir")
    ap.add_argument("--nodes", type=int, help="training nodes (default: env.sh PRONLORA_NODES)")
    ap.add_argument("--gpus-per-node", type=int, help="GPUs per training node (default: env.sh)")
    ap.add_argument("--no-prep", action="store_true")
    ap.add_argument("--set", action="append", default=[], help="config override key=value")
    args = ap.parse_args()
    epochs = [int(e) for e in args.epochs.split(",")] if args.epochs else None
    settings = site_settings(REPO)
    plan = build_plan(
        args.config,
        args.set,
        epochs,
        args.shards,
        args.run_dir,
        settings,
        prep=not args.no_prep,
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
    )
    print(plan.describe())
    if args.dry_run:
        print("dry run: nothing submitted")
        return 0
    jobs = submit(plan, args.executor)
    print(json.dumps(jobs, indent=2))
    return 0


if __name__ == "__main__":
    run_job(main, (ConfigError, ValueError))
