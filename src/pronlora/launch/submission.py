"""What was submitted, kept in the plan's dir so ``jobs/status.py`` can find every job later.

``submission.json`` holds the plan (runs, jobs, log patterns, estimates) and the command that
submitted it, written before the first job is queued; ``job_ids.txt`` gets one ``key=id`` line
per queued job, by whichever backend queued it (the emitted script included). A resubmission
into the same dir adds lines: the last id of a key is its current job.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from pronlora.core.atomic import write_json, write_text
from pronlora.core.errors import DataError
from pronlora.core.layout import JOB_IDS, SUBMISSION, read_json_file
from pronlora.launch.plan import LaunchPlan

# Where each backend's jobs write their output (sbatch: the templates' --output; submitit:
# its folder); %x job name, %j job id, %A array job id, %a array task.
LOG_PATTERNS = {
    "sbatch": "{logs}/%x-%j.out",
    "sbatch-array": "{logs}/%x-%A_%a.out",
    "submitit": "{root}/submitit/%j_0_log.err",
}


def log_pattern(plan: LaunchPlan, backend: str, key: str) -> str:
    job = plan.job(key)
    root = Path(plan.run(job.run).run_dir) if job.run else plan.root
    if backend != "sbatch":
        return LOG_PATTERNS["submitit"].format(root=plan.root)
    return LOG_PATTERNS["sbatch-array" if job.array else "sbatch"].format(logs=root / "logs")


def record_submission(plan: LaunchPlan, backend: str, command: list[str]) -> Path:
    """``submission.json`` in the plan's dir (before any job is queued)."""
    estimates = plan.estimates() if any(j.gpu for j in plan.jobs) else {}
    path = plan.root / SUBMISSION
    write_json(
        path,
        {
            "backend": backend,
            "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": command,
            "shards": plan.shards,
            "report_dir": plan.report_dir,
            "runs": [dataclasses.asdict(r) for r in plan.runs],
            "jobs": [
                dataclasses.asdict(j) | {"log": log_pattern(plan, backend, j.key)}
                for j in plan.jobs
            ],
            "estimate_s": {k: sec for k, (sec, _) in estimates.items()},
        },
    )
    return path


def record_job_ids(root: Path, ids: dict[str, str]) -> None:
    path = root / JOB_IDS
    old = path.read_text() if path.is_file() else ""
    write_text(path, old + "".join(f"{k}={v}\n" for k, v in ids.items()))


def read_submission(root: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """The plan as submitted and each job key's current id."""
    path = root / SUBMISSION
    if not path.is_file():
        raise DataError(
            f"{root}: no {SUBMISSION} (not a dir that jobs/submit.py or slurm/pipeline.sh "
            "submitted into; give the run dir or grid dir it printed as run_dir=)"
        )
    plan = read_json_file(path)
    ids: dict[str, str] = {}
    ids_path = root / JOB_IDS
    for n, line in enumerate(ids_path.read_text().splitlines() if ids_path.is_file() else [], 1):
        key, sep, value = line.partition("=")
        if not sep or not value.strip():
            raise DataError(f"{ids_path}, line {n}: expected key=job id, got {line!r}")
        ids[key] = value.strip()
    return plan, ids
