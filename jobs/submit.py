#!/usr/bin/env python3
"""Submit prep -> train -> infer (array) -> collect: one launch plan, two backends.

  --executor sbatch   the templates in slurm/ (what slurm/pipeline.sh runs)
  --executor slurm    submitit on Slurm (checkpointable training that resubmits itself)
  --executor local    submitit on this machine, one stage after another

  --experiment table3 [--seeds N]   the paper's Table 3 grid (both strategies, epochs 1-4), one
                                    collect job over all runs

Site settings come from env.sh (environment overrides apply). --dry-run prints the plan (and,
for sbatch, the commands) and submits nothing. Prints run_dir=, <job>_job=, report= lines.
Exit 2: a bad argument, config or site setting, or a scheduler that refuses.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from pronlora.core.atomic import write_text
from pronlora.core.cli import run_job
from pronlora.core.config import ConfigError, available
from pronlora.launch.experiment import available_experiments, experiment_runs, load_experiment
from pronlora.launch.plan import build_plan, check_inputs, plan_runs
from pronlora.launch.sbatch import submission_script, submit_sbatch
from pronlora.launch.submission import record_job_ids, record_submission
from pronlora.launch.submitit_backend import site_settings, submit

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", help=f"one of {available()} or a YAML path")
    ap.add_argument(
        "--experiment",
        help=f"a grid of runs: one of {available_experiments()} or a YAML path "
        "(--config then replaces its base config, e.g. smoke for a CPU demo)",
    )
    ap.add_argument("--seeds", type=int, default=0, help="repeat every run with seed=1..N")
    ap.add_argument("--executor", choices=["sbatch", "slurm", "local"], default="slurm")
    ap.add_argument("--dry-run", action="store_true", help="print the plan, submit nothing")
    ap.add_argument("--epochs", help="comma list of epochs to evaluate (default: all)")
    ap.add_argument(
        "--shards",
        default="1",
        help="test-set shards: one GPU worker each, decoding every checkpoint of its shard",
    )
    ap.add_argument("--run-dir")
    ap.add_argument("--nodes", help="training nodes (default: env.sh PRONLORA_NODES)")
    ap.add_argument("--gpus-per-node", help="GPUs per node (default: env.sh)")
    ap.add_argument("--no-prep", action="store_true")
    ap.add_argument("--set", action="append", default=[], help="config override key=value")
    ap.add_argument(
        "--emit-script",
        metavar="FILE",
        help="--executor sbatch: write the sbatch commands to FILE instead of running them "
        "(slurm/pipeline.sh builds the plan in the image and runs FILE on the host)",
    )
    args = ap.parse_args()
    settings = site_settings(REPO)
    if args.experiment:
        if args.epochs:
            raise ConfigError("--epochs: an experiment evaluates every epoch of its runs")
        exp = load_experiment(args.experiment)
        root = Path(args.run_dir or _stamped(settings, exp.name)).resolve()
        runs = experiment_runs(exp, root, args.seeds, args.config, tuple(args.set))
        plan = plan_runs(
            runs,
            args.shards,
            settings,
            not args.no_prep,
            args.nodes,
            args.gpus_per_node,
            str(root),
        )
    else:
        if not args.config:
            raise ConfigError("--config or --experiment is required")
        if args.seeds:
            raise ConfigError("--seeds applies to an --experiment")
        plan = build_plan(
            args.config,
            args.set,
            _epochs(args.epochs),
            args.shards,
            args.run_dir,
            settings,
            prep=not args.no_prep,
            nodes=args.nodes,
            gpus_per_node=args.gpus_per_node,
        )
    inputs = check_inputs(settings, prep=not args.no_prep)  # before anything is submitted
    print(plan.describe())
    print("\n".join(inputs))
    if args.emit_script and (args.executor != "sbatch" or args.dry_run):
        raise ConfigError("--emit-script goes with --executor sbatch, without --dry-run")
    ids: dict[str, str] = {}
    if args.emit_script:
        script = submission_script(plan)  # the dirs it may remove: those missing before this
        record_submission(plan, args.executor, resume_command(args, plan.root))
        write_text(Path(args.emit_script), script)
    elif args.dry_run:
        ids = submit_sbatch(plan, dry_run=True) if args.executor == "sbatch" else {}
    else:
        existed = plan.root.exists()
        record_submission(plan, args.executor, resume_command(args, plan.root))
        try:
            ids = submit_sbatch(plan) if args.executor == "sbatch" else submit(plan, args.executor)
        except Exception:
            if not existed:  # nothing is left queued: leave no record of it either
                shutil.rmtree(plan.root, ignore_errors=True)
            raise
        record_job_ids(plan.root, ids)
    if args.dry_run:
        print("dry run: nothing submitted")
    print(f"run_dir={plan.root}")
    for key, job_id in ids.items():
        print(f"{key.replace(':', '_')}_job={job_id}")
    print(f"report={plan.report_dir}/report.md")
    return 0


def resume_command(args: argparse.Namespace, root: Path) -> list[str]:
    """The command that submitted this plan, into this dir: run again, it resumes the plan
    (finished stages skip their work, training resumes from its checkpoint)."""
    argv, skip = [], False
    for a in sys.argv[1:]:
        if skip or a == "--emit-script":
            skip = not skip
            continue
        if not a.startswith("--emit-script="):
            argv.append(a)
    if args.run_dir is None:
        argv += ["--run-dir", str(root)]
    if args.executor == "sbatch":  # what slurm/pipeline.sh runs: it adds --executor sbatch
        return ["slurm/pipeline.sh", *(argv[2:] if argv[:2] == ["--executor", "sbatch"] else argv)]
    return ["python", "jobs/submit.py", *argv]


def _stamped(settings: dict[str, str], name: str) -> str:
    runs = settings.get("PRONLORA_RUNS")
    if not runs:
        raise ConfigError("env.sh: PRONLORA_RUNS is empty")
    return str(Path(runs) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")


def _epochs(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(e) for e in text.split(",")]
    except ValueError:
        raise ConfigError(f"--epochs: {text!r} is not a comma list of epoch numbers") from None


if __name__ == "__main__":
    run_job(main)
