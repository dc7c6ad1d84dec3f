#!/usr/bin/env python3
"""Submit prep -> train -> infer (array) -> collect: one launch plan, two backends.

  --executor sbatch   the templates in slurm/ (what slurm/pipeline.sh runs)
  --executor slurm    submitit on Slurm (checkpointable training that resubmits itself)
  --executor local    submitit on this machine, one stage after another

Site settings come from env.sh (environment overrides apply). --dry-run prints the plan (and,
for sbatch, the commands) and submits nothing. Prints run_dir=, <job>_job=, report= lines.
Exit 2: a bad argument, config or site setting, or a scheduler that refuses.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pronlora.cli import run_job
from pronlora.config import available
from pronlora.launch import site_settings, submit
from pronlora.plan import build_plan
from pronlora.sbatch import submit_sbatch

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", required=True, help=f"one of {available()} or a YAML path")
    ap.add_argument("--executor", choices=["sbatch", "slurm", "local"], default="slurm")
    ap.add_argument("--dry-run", action="store_true", help="print the plan, submit nothing")
    ap.add_argument("--epochs", help="comma list of epochs to evaluate (default: all)")
    ap.add_argument("--shards", default="1")
    ap.add_argument("--run-dir")
    ap.add_argument("--nodes", help="training nodes (default: env.sh PRONLORA_NODES)")
    ap.add_argument("--gpus-per-node", help="GPUs per node (default: env.sh)")
    ap.add_argument("--no-prep", action="store_true")
    ap.add_argument("--set", action="append", default=[], help="config override key=value")
    args = ap.parse_args()
    epochs = _epochs(args.epochs)
    plan = build_plan(
        args.config,
        args.set,
        epochs,
        args.shards,
        args.run_dir,
        site_settings(REPO),
        prep=not args.no_prep,
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
    )
    print(plan.describe())
    if args.executor == "sbatch":
        ids = submit_sbatch(plan, dry_run=args.dry_run)
    elif args.dry_run:
        ids = {}
    else:
        ids = submit(plan, args.executor)
    if args.dry_run:
        print("dry run: nothing submitted")
    single = len(plan.runs) == 1
    print(f"run_dir={plan.runs[0].run_dir if single else Path(plan.report_dir).parent}")
    for key, job_id in ids.items():
        print(f"{key.replace(':', '_')}_job={job_id}")
    print(f"report={plan.report_dir}/report.md")
    return 0


def _epochs(text: str | None) -> list[int] | None:
    from pronlora.config import ConfigError

    if not text:
        return None
    try:
        return [int(e) for e in text.split(",")]
    except ValueError:
        raise ConfigError(f"--epochs: {text!r} is not a comma list of epoch numbers") from None


if __name__ == "__main__":
    run_job(main)
