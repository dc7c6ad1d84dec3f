"""The submitit backend of a launch plan (``plan.py``): the stages as Python callables.

Modelled on dinov2's pattern: the training callable is ``Checkpointable``; on submitit's
timeout/preemption signal (USR2) every task saves a step checkpoint at the end of the current
step (``stopping.py``'s protocol, the same as the sbatch backend's), then submitit requeues a
resubmission of the stage, which resumes from that checkpoint. Several GPUs: one submitit task per
GPU (``nodes`` x ``tasks_per_node``), each exporting the torch.distributed environment, as
dinov2 does. Stages depend on each other with ``afterok`` on Slurm and run one after another
on the local executor.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import submitit

from pronlora.core.atomic import open_append
from pronlora.core.config import load_config
from pronlora.core.errors import EnvironmentProblem
from pronlora.core.layout import JOB_TIMES
from pronlora.launch.plan import Job, LaunchPlan

SETTINGS_PREFIXES = ("PRONLORA_", "HF_HOME")


def site_settings(root: Path) -> dict[str, str]:
    """env.sh's settings as bash resolves them (defaults overridden by the environment)."""
    out = subprocess.run(
        ["bash", "-c", f"source {shlex.quote(str(root / 'env.sh'))} && env -0"],
        capture_output=True,
        check=True,
    ).stdout.decode()
    pairs = (item.split("=", 1) for item in out.split("\0") if "=" in item)
    return {k: v for k, v in pairs if k.startswith(SETTINGS_PREFIXES)}


def minutes(hms: str) -> int:
    """Slurm time (``[D-]HH:MM:SS`` or ``MM``) -> whole minutes for submitit."""
    days = 0
    if "-" in hms:
        d, hms = hms.split("-", 1)
        days = int(d)
    parts = [int(p) for p in hms.split(":")]
    if len(parts) == 1:
        return days * 1440 + parts[0]
    while len(parts) < 3:
        parts.insert(0, 0)
    h, m, s = parts
    return days * 1440 + h * 60 + m + (1 if s else 0)


def require_gpu(stage: str) -> None:
    """A GPU stage that sees no GPU would decode or train on the CPU for days: refuse (the
    sbatch templates' require_gpu, for the submitit backend)."""
    import torch

    if not torch.cuda.is_available():
        where = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise EnvironmentProblem(
            f"the {stage} job asked for GPUs (PRONLORA_GRES) but sees none "
            f"(CUDA_VISIBLE_DEVICES={where!r}); set PRONLORA_GRES= for CPU-only nodes"
        )


# --- the stages (picklable callables) ---------------------------------------------------------
@dataclass
class PrepStage:
    source: str
    data: str
    prepared: str

    def __call__(self) -> dict[str, Any]:
        from pronlora.core.cli import setup_logging
        from pronlora.data.prep import prepare

        setup_logging()
        return prepare(self.source, self.data, self.prepared).manifest["counts"]


@dataclass
class TrainStage(submitit.helpers.Checkpointable):
    config: str
    overrides: list[str]
    prepared: str
    model: str
    run_dir: str
    gpu: bool = False  # the plan's job asks for GPUs

    def __call__(self) -> int:
        from pronlora.core.cli import setup_logging
        from pronlora.core.lean_imports import keep_out, unused_packages
        from pronlora.train.stopping import EXIT_REQUEUE, StopRequest, install_stop_signals

        setup_logging()
        if self.gpu:
            require_gpu("train")
        cfg = load_config(self.config, self.overrides)
        keep_out(unused_packages(cfg.quantization))
        from pronlora.train.recipe import train

        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            # device = LOCAL_RANK among the job's GPUs (train.py sets it)
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        # The same protocol as the sbatch template (stopping.py): USR1, USR2 (submitit's
        # time-limit signal) and TERM make every task finish the step and save a checkpoint;
        # then submitit's own USR2 handler, replaced meanwhile, requeues the job through
        # checkpoint() below.
        stop = StopRequest()
        replaced = install_stop_signals(stop)
        rc = train(cfg, self.prepared, self.model, self.run_dir, stop=stop)
        if rc == EXIT_REQUEUE:
            requeue = replaced.get(signal.SIGUSR2)
            if not callable(requeue):
                raise RuntimeError(f"training stopped with status {rc}; resubmit to resume")
            requeue(signal.SIGUSR2, None)  # task 0: requeues and exits; other tasks: returns
        return rc

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        # the step checkpoint of the stop is on disk: the resubmitted copy resumes from it
        return submitit.helpers.DelayedSubmission(TrainStage(**asdict(self)))


@dataclass
class InferTask:
    """Array task ``t`` of G tasks per job: worker t*G+i of the checkpoints x shards grid."""

    run_dir: str
    prepared: str
    checkpoints: list[str]
    num_shards: int
    workers_per_task: int
    tasks: int  # the array's size (the plan's job.array)
    gpu: bool = False  # the plan's job asks for GPUs

    def __call__(self, task: int) -> list[dict[str, Any]]:
        from pronlora.core.cli import setup_logging

        local = submitit.JobEnvironment().local_rank if self.workers_per_task > 1 else 0
        visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d]
        if len(visible) > 1:  # before CUDA starts: this worker sees its own GPU only
            os.environ["CUDA_VISIBLE_DEVICES"] = visible[local % len(visible)]
        from pronlora.core.decode_grid import worker_items
        from pronlora.core.lean_imports import keep_out, run_quantization, unused_packages
        from pronlora.infer.inputs import check_decode_inputs

        setup_logging()
        if self.gpu:
            require_gpu("infer")
        n_workers = self.workers_per_task * self.tasks
        worker = task * self.workers_per_task + local
        items = worker_items(self.checkpoints, self.num_shards, worker, n_workers)
        # every item refused before the first is decoded (as jobs/infer.py does)
        check_decode_inputs(
            self.run_dir,
            items,
            self.num_shards,
            self.prepared,
            "test",
            other_data=False,
            config_and_model_given=False,
        )
        keep_out(unused_packages(run_quantization(self.run_dir)))
        from pronlora.infer.models import Models
        from pronlora.infer.stage import run_shard

        models = Models(swap=len({c for c, _ in items}) > 1)  # one load for all items
        return [
            run_shard(self.run_dir, c, self.prepared, "test", s, self.num_shards, models=models)
            for c, s in items
        ]


@dataclass
class CollectStage:
    prepared: str
    run_dirs: list[str]
    out: str

    def __call__(self) -> str:
        from pronlora.collect.report import collect_and_report

        runs = [Path(r) for r in self.run_dirs]
        return str(collect_and_report(Path(self.prepared), runs, Path(self.out))["report"])


def _executor(kind: str, plan: LaunchPlan, job: Job) -> submitit.Executor:
    s = plan.settings
    folder = Path(plan.report_dir).parent / "submitit"
    container = s.get("PRONLORA_CONTAINER")
    python = None
    if container:
        python = (
            f"apptainer exec --nv --bind {shlex.quote(s['PRONLORA_ROOT'])} "
            f"{shlex.quote(container)} python3"
        )
    tasks = job.procs_per_node if job.stage in ("train", "infer") else 1
    if kind == "local":
        ex = submitit.LocalExecutor(folder, python=python)
        # submitit hides every GPU from a local job that asks for none (CUDA_VISIBLE_DEVICES="")
        gpus = job.procs_per_node if job.gpu else 0
        ex.update_parameters(
            timeout_min=minutes(job.time), tasks_per_node=tasks, gpus_per_node=gpus
        )
        return ex
    ex = submitit.SlurmExecutor(folder, python=python)
    params: dict[str, Any] = {
        "job_name": f"pronlora-{job.key.replace(':', '-')}",
        "time": minutes(job.time),
        "cpus_per_task": job.cpus_per_task,
        "nodes": job.nodes,
        "ntasks_per_node": tasks,  # one task per GPU (dinov2 style)
        "signal_delay_s": int(s.get("PRONLORA_SIGNAL_GRACE_S") or 180),
    }
    for key, name in (
        ("PRONLORA_PARTITION", "partition"),
        ("PRONLORA_ACCOUNT", "account"),
        ("PRONLORA_QOS", "qos"),
    ):
        if s.get(key):
            params[name] = s[key]
    if job.gpu:
        params["gres"] = f"{s['PRONLORA_GRES'].rsplit(':', 1)[0]}:{job.procs_per_node}"
    if job.mem:
        params["mem"] = job.mem
    ex.update_parameters(**params)
    return ex


def _callable(plan: LaunchPlan, job: Job) -> Any:
    s = plan.settings
    if job.stage == "prep":
        return PrepStage(s["PRONLORA_DATA_SOURCE"], s["PRONLORA_DATA"], s["PRONLORA_PREPARED"])
    if job.stage == "collect":
        runs = [r.run_dir for r in plan.runs]
        return CollectStage(s["PRONLORA_PREPARED"], runs, plan.report_dir)
    run = plan.run(job.run)
    if job.stage == "train":
        prepared, model = s["PRONLORA_PREPARED"], s["PRONLORA_MODEL"]
        return TrainStage(
            run.config, list(run.overrides), prepared, model, run.run_dir, gpu=job.gpu
        )
    prepared = s["PRONLORA_PREPARED"]
    return InferTask(
        run.run_dir,
        prepared,
        list(run.evaluate),
        plan.shards,
        job.procs_per_node,
        job.array,
        gpu=job.gpu,
    )


def submit(plan: LaunchPlan, kind: str) -> dict[str, str]:
    """Submit the plan through submitit; a scheduler that refuses is an EnvironmentProblem."""
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    missing = [c for c in ("sbatch", "srun") if shutil.which(c) is None]
    if kind == "slurm" and missing:
        raise EnvironmentProblem(
            f"no Slurm here ({', '.join(missing)} not on PATH): submit from a login node, or "
            "use --executor local to run the chain on this machine"
        )
    dirs = {str(Path(plan.report_dir).parent), *(r.run_dir for r in plan.runs)}
    made = [d for d in sorted(dirs) if not Path(d).exists()]
    submitted: list[submitit.Job] = []
    try:
        return _submit(plan, kind, submitted)
    except (FailedJobError, FailedSubmissionError, FileNotFoundError) as exc:
        if kind != "slurm":
            raise
        for j in submitted:
            j.cancel(check=False)
        for d in made:
            shutil.rmtree(d, ignore_errors=True)
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise EnvironmentProblem(
            f"Slurm refused the submission ({detail}); is the controller reachable from this "
            "host (`sinfo`)? Nothing of this chain is left queued."
        ) from None


def _submit(plan: LaunchPlan, kind: str, submitted: list[submitit.Job]) -> dict[str, str]:
    """Submit in plan order; on the local executor each job waits for the ones before it."""
    os.environ.update({k: v for k, v in plan.settings.items() if k.startswith("PRONLORA_")})
    for d in {str(Path(plan.report_dir).parent), *(r.run_dir for r in plan.runs)}:
        Path(d).mkdir(parents=True, exist_ok=True)
    ids: dict[str, str] = {}
    for job in plan.jobs:
        ex = _executor(kind, plan, job)
        deps = [ids[k].split("_")[0] for k in job.after if k in ids]
        if kind == "slurm" and deps:
            ex.update_parameters(additional_parameters={"dependency": f"afterok:{':'.join(deps)}"})
        fn = _callable(plan, job)
        if kind == "local":
            ids[job.key] = _run_here(plan, job, ex, fn, submitted)
            continue
        handles = ex.map_array(fn, list(range(job.array))) if job.array else [ex.submit(fn)]
        submitted.extend(handles)
        ids[job.key] = handles[0].job_id
    return ids


def _run_here(
    plan: LaunchPlan, job: Job, ex: submitit.Executor, fn: Any, submitted: list[submitit.Job]
) -> str:
    """A job on this machine, array tasks one after another (they would share its GPUs), each
    awaited (raises on failure) and its wall time recorded in the grid dir's job_times.jsonl."""
    first = ""
    for task in range(job.array) if job.array else [None]:
        t0 = time.time()
        handle = ex.submit(fn) if task is None else ex.submit(fn, task)
        submitted.append(handle)
        first = first or handle.job_id
        handle.result()
        key = job.key if task is None else f"{job.key}[{task}]"
        record = {"job": key, "stage": job.stage, "wall_s": round(time.time() - t0, 1)}
        with open_append(Path(plan.report_dir).parent / JOB_TIMES) as fh:
            fh.write(json.dumps(record) + "\n")
    return first
