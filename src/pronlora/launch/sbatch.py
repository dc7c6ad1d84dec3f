"""The sbatch backend of a launch plan: the templates in ``slurm/``, chained with ``afterok``.

Each job gets the variables its template reads in its environment (sbatch exports the
submitting environment), so values with commas or spaces need no quoting. A submission that
fails part-way cancels what it queued and removes a run dir it created.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

from pronlora.core.errors import EnvironmentProblem
from pronlora.core.layout import JOB_IDS, RunDir, no_links_inside
from pronlora.launch.plan import Job, LaunchPlan

TEMPLATES = {s: f"slurm/{s}.sbatch" for s in ("prep", "train", "infer", "collect")}


def _logs(plan: LaunchPlan, job: Job) -> Path:
    """The job's Slurm log folder, refused if a link was planted there: Slurm would follow it."""
    run = RunDir(Path(plan.run(job.run).run_dir if job.run else Path(plan.report_dir).parent))
    return no_links_inside(run.root, run.logs)


def job_env(plan: LaunchPlan, job: Job) -> dict[str, str]:
    """The variables the job's template reads (on top of env.sh's settings)."""
    env = {"PRONLORA_GPUS_PER_NODE": str(job.procs_per_node)}
    if job.run:
        r = plan.run(job.run)
        env.update(
            PRONLORA_RUN_DIR=r.run_dir,
            PRONLORA_TRAIN_CONFIG=r.config,
            PRONLORA_TRAIN_OVERRIDES=" ".join(r.overrides),
            PRONLORA_CHECKPOINTS=",".join(r.evaluate),
            PRONLORA_SHARDS=str(plan.shards),
        )
    if job.stage == "collect":
        env.update(
            PRONLORA_RUN_DIR=str(Path(plan.report_dir).parent),
            PRONLORA_COLLECT_RUNS=" ".join(r.run_dir for r in plan.runs),
        )
    return env


def sbatch_args(plan: LaunchPlan, job: Job, ids: dict[str, str]) -> list[str]:
    s = plan.settings
    root = s["PRONLORA_ROOT"]
    args = ["sbatch", "--parsable", f"--chdir={root}", f"--time={job.time}"]
    for key, option in (("PARTITION", "partition"), ("ACCOUNT", "account"), ("QOS", "qos")):
        if s.get(f"PRONLORA_{key}"):
            args.append(f"--{option}={s[f'PRONLORA_{key}']}")
    if job.stage == "train":
        name = plan.run(job.run).name
        grace = s.get("PRONLORA_SIGNAL_GRACE_S") or "180"
        args += [f"--job-name=pronlora-train-{name}", f"--nodes={job.nodes}"]
        args += ["--ntasks-per-node=1", f"--signal=B:USR1@{grace}"]
    if job.gpu:
        gres = s["PRONLORA_GRES"]  # gpu:4 -> gpu:<count>, gpu:a100:4 -> gpu:a100:<count>
        args.append(f"--gres={gres.rsplit(':', 1)[0]}:{job.procs_per_node}")
    per_process = job.cpus_per_task
    args.append(f"--cpus-per-task={per_process * (job.procs_per_node if job.run else 1)}")
    if job.mem:
        args.append(f"--mem={job.mem}")
    if job.array:
        args.append(f"--array=0-{job.array - 1}")
    deps = [ids[k].split(";")[0] for k in job.after if k in ids]
    if deps:
        args.append(f"--dependency=afterok:{':'.join(deps)}")
    pattern = "%x-%A_%a.out" if job.array else "%x-%j.out"
    args.append(f"--output={_logs(plan, job) / pattern}")
    args.append(str(Path(root) / TEMPLATES[job.stage]))
    return args


def submission_script(plan: LaunchPlan) -> str:
    """The plan's sbatch commands as a bash script for a host with sbatch but no pronlora (the
    plan is built in the image, the script runs outside it): it prints each job id as a
    key=value line and, when Slurm refuses a job, cancels what it queued and removes the run
    dirs it made, like ``submit_sbatch``."""
    dirs = {str(Path(plan.report_dir).parent), *(r.run_dir for r in plan.runs)}
    made = [d for d in sorted(dirs) if not Path(d).exists()]
    logs = sorted({str(_logs(plan, job)) for job in plan.jobs})
    q = shlex.quote
    lines = [
        "#!/usr/bin/env bash",
        "# Written by jobs/submit.py --emit-script: submits one launch plan with sbatch.",
        "set -uo pipefail",
        "queued=()",
        "refused() {",
        '    echo "error: sbatch refused the $1 job ($2); nothing is left queued" >&2',
        '    [ ${#queued[@]} -eq 0 ] || scancel "${queued[@]}"',
        *(f"    rm -rf {q(d)}" for d in made),
        "    exit 2",
        "}",
        # the settings the plan was built with (env.sh as the image saw it)
        *(f"export {k}={q(v)}" for k, v in sorted(plan.settings.items())),
        "mkdir -p " + " ".join(q(d) for d in logs),
        f'record_id() {{ echo "$1=$2" >> {q(str(plan.root / JOB_IDS))}; }}',
    ]
    ids: dict[str, str] = {}
    refs: dict[str, str] = {}
    for n, job in enumerate(plan.jobs):
        var = f"job{n}"
        env = job_env(plan, job)
        command = " ".join(q(a) for a in sbatch_args(plan, job, ids))
        for ref, name in refs.items():  # a dependency is the id an earlier line captured
            command = command.replace(ref, f"${{{name}}}")
        exports = " ".join(f"{k}={q(v)}" for k, v in env.items())
        lines += [
            f'out=$(env {exports} {command} 2>&1) || refused {q(job.key)} "$(tail -1 <<< "$out")"',
            f"{var}=${{out%%;*}}",
            f'queued+=("${var}")',
            f'echo "{job.key.replace(":", "_")}_job=${var}"',
            f'record_id {q(job.key)} "${var}"',
        ]
        ids[job.key] = f"JOBREF{n}X"
        refs[f"JOBREF{n}X"] = var
    return "\n".join(lines) + "\n"


def submit_sbatch(plan: LaunchPlan, dry_run: bool = False) -> dict[str, str]:
    """Submit every job in order; returns job key -> Slurm job id (dry run: made-up ids)."""
    base = {**os.environ, **plan.settings}
    dirs = {str(Path(plan.report_dir).parent), *(r.run_dir for r in plan.runs)}
    made = [d for d in sorted(dirs) if not Path(d).exists()]
    ids: dict[str, str] = {}
    if dry_run:
        for n, job in enumerate(plan.jobs, 101):
            env = job_env(plan, job)
            print(" ".join(shlex.quote(a) for a in sbatch_args(plan, job, ids)))
            print("  # with " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()))
            ids[job.key] = str(n)
        return ids
    if shutil.which("sbatch") is None:
        raise EnvironmentProblem("sbatch is not on PATH: submit from a Slurm login node")
    for job in plan.jobs:
        _logs(plan, job).mkdir(parents=True, exist_ok=True)
    try:
        for job in plan.jobs:
            proc = subprocess.run(
                sbatch_args(plan, job, ids),
                env={**base, **job_env(plan, job)},
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                lines = (proc.stderr or proc.stdout).strip().splitlines()
                answer = lines[-1] if lines else f"exit {proc.returncode}"
                raise EnvironmentProblem(f"sbatch refused the {job.key} job ({answer})")
            ids[job.key] = proc.stdout.strip().split(";")[0]
    except EnvironmentProblem as exc:
        if ids:
            subprocess.run(["scancel", *ids.values()], capture_output=True)
        for d in made:
            shutil.rmtree(d, ignore_errors=True)
        raise EnvironmentProblem(f"{exc}; nothing is left queued") from None
    return ids
