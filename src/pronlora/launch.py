"""The submitit launcher: the same chain as slurm/pipeline.sh, as Python callables.

Modelled on dinov2's pattern: the training callable is ``Checkpointable``; when submitit's
timeout/preemption signal (USR2) arrives it returns a resubmission of itself, and the rerun
resumes from the newest step checkpoint in the run dir. Several GPUs: one submitit task per
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import submitit

from pronlora.config import ConfigError, load_config
from pronlora.errors import EnvironmentProblem

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


# --- the stages (picklable callables) ---------------------------------------------------------
@dataclass
class PrepStage:
    source: str
    data: str
    prepared: str

    def __call__(self) -> dict[str, Any]:
        from pronlora.cli import setup_logging
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

    def __call__(self) -> int:
        from pronlora.cli import setup_logging
        from pronlora.train import train

        setup_logging()
        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            # device = LOCAL_RANK among the job's GPUs (train.py sets it)
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        cfg = load_config(self.config, self.overrides)
        # USR2 and TERM belong to submitit (checkpoint() below, then requeue); USR1 still
        # makes the trainer save and stop, for a manual `scancel --signal=USR1`.
        rc = train(cfg, self.prepared, self.model, self.run_dir, stop_signals=(signal.SIGUSR1,))
        if rc != 0:
            raise RuntimeError(f"training stopped with status {rc}; resubmit to resume")
        return rc

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        # Step checkpoints are on disk; the resubmitted copy resumes from the newest one (on
        # several tasks submitit calls this on rank 0 only, mid-step, so it cannot ask the
        # ranks for a fresh checkpoint: the periodic one is the resume point).
        return submitit.helpers.DelayedSubmission(TrainStage(**asdict(self)))


@dataclass
class InferTask:
    run_dir: str
    prepared: str
    num_shards: int

    def __call__(self, checkpoint: str, shard: int) -> dict[str, Any]:
        from pronlora.cli import setup_logging
        from pronlora.infer import run_shard

        setup_logging()
        return run_shard(self.run_dir, checkpoint, self.prepared, "test", shard, self.num_shards)


@dataclass
class CollectStage:
    prepared: str
    run_dir: str

    def __call__(self) -> str:
        from pronlora.collect import collect
        from pronlora.report import write_outputs

        entries = collect(Path(self.prepared), [Path(self.run_dir)])
        manifest = json.loads((Path(self.prepared) / "manifest.json").read_text())
        paths = write_outputs(
            entries, Path(self.run_dir) / "report", synthetic=bool(manifest.get("synthetic"))
        )
        return str(paths["report"])


# --- the plan ---------------------------------------------------------------------------------
@dataclass
class Plan:
    config: str
    overrides: list[str]
    run_dir: str
    checkpoints: list[str]
    shards: int
    settings: dict[str, str]
    stages: list[dict[str, Any]] = field(default_factory=list)

    def describe(self) -> str:
        lines = [f"run dir: {self.run_dir}", f"config: {self.config} {' '.join(self.overrides)}"]
        for st in self.stages:
            dep = f" after {st['after']}" if st["after"] else ""
            arr = f" array of {st['array']}" if st.get("array") else ""
            lines.append(f"  {st['name']}: {st['resources']}{arr}{dep}")
        return "\n".join(lines)


def build_plan(
    config: str,
    overrides: list[str],
    epochs: list[int] | None,
    shards: int,
    run_dir: str | None,
    settings: dict[str, str],
    prep: bool = True,
    nodes: int | None = None,
    gpus_per_node: int | None = None,
) -> Plan:
    """The chain; ``nodes``/``gpus_per_node`` default to env.sh's PRONLORA_NODES/_GPUS_PER_NODE."""
    from pronlora.train import accumulation_steps

    cfg = load_config(config, overrides)  # validated before anything is submitted
    if shards < 1:
        raise ConfigError("--shards must be >= 1")
    nodes = nodes or int(settings.get("PRONLORA_NODES") or 1)
    gpus = gpus_per_node or int(settings.get("PRONLORA_GPUS_PER_NODE") or 1)
    if nodes < 1 or gpus < 1:
        raise ConfigError(f"--nodes {nodes} / --gpus-per-node {gpus}: must be >= 1")
    accumulation_steps(cfg, nodes * gpus)  # the effective batch must split over the ranks
    epochs = epochs or list(range(1, cfg.epochs + 1))
    bad = [e for e in epochs if not 1 <= e <= cfg.epochs]
    if bad:
        raise ConfigError(f"--epochs: {bad} not epochs of {cfg.name} (1..{cfg.epochs})")
    for key in ("PRONLORA_PREPARED", "PRONLORA_MODEL", "PRONLORA_RUNS"):
        if not settings.get(key):
            raise ConfigError(f"env.sh: {key} is empty")
    if run_dir is None:
        import time

        run_dir = str(
            Path(settings["PRONLORA_RUNS"]) / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        )
    checkpoints = ["base"] + [f"epoch-{e}" for e in epochs]
    gres = settings.get("PRONLORA_GRES", "")

    def gpu(count: int) -> dict[str, str]:  # gpu:4 -> gpu:<count>, gpu:a100:4 -> gpu:a100:<count>
        return {"gres": f"{gres.rsplit(':', 1)[0]}:{count}" if gres else ""}

    cpu = {
        "cpus_per_task": int(settings.get("PRONLORA_CPUS_PER_TASK") or 1),  # per GPU
        "mem": settings.get("PRONLORA_MEM", ""),
    }
    stages = []
    if prep:
        stages.append(
            {
                "name": "prep",
                "after": None,
                "resources": {"time": settings["PRONLORA_TIME_PREP"], "cpus_per_task": 1},
            }
        )
    stages += [
        {
            "name": "train",
            "after": "prep" if prep else None,
            "resources": {
                "time": settings["PRONLORA_TIME_TRAIN"],
                "nodes": nodes,
                "tasks_per_node": gpus,  # one task (process) per GPU
                **cpu,
                **gpu(gpus),
            },
        },
        {
            "name": "infer",
            "after": "train",
            "array": len(checkpoints) * shards,
            "resources": {"time": settings["PRONLORA_TIME_INFER"], **cpu, **gpu(1)},
        },
        {
            "name": "collect",
            "after": "infer",
            "resources": {"time": settings["PRONLORA_TIME_COLLECT"], "cpus_per_task": 1},
        },
    ]
    return Plan(
        config, overrides, str(Path(run_dir).resolve()), checkpoints, shards, settings, stages
    )


def _executor(kind: str, plan: Plan, stage: dict[str, Any]) -> submitit.Executor:
    folder = Path(plan.run_dir) / "submitit"
    s = plan.settings
    container = s.get("PRONLORA_CONTAINER")
    python = None
    if container:
        python = (
            f"apptainer exec --nv --bind {shlex.quote(s['PRONLORA_ROOT'])} "
            f"{shlex.quote(container)} python3"
        )
    res = stage["resources"]
    if kind == "local":
        ex = submitit.LocalExecutor(folder, python=python)
        ex.update_parameters(
            timeout_min=minutes(res["time"]), tasks_per_node=res.get("tasks_per_node", 1)
        )
        return ex
    ex = submitit.SlurmExecutor(folder, python=python)
    params: dict[str, Any] = {
        "job_name": f"pronlora-{stage['name']}",
        "time": minutes(res["time"]),
        "cpus_per_task": res.get("cpus_per_task", 1),
        "nodes": res.get("nodes", 1),
        "ntasks_per_node": res.get("tasks_per_node", 1),
        "signal_delay_s": int(s.get("PRONLORA_SIGNAL_GRACE_S") or 180),
    }
    for key, name in (
        ("PRONLORA_PARTITION", "partition"),
        ("PRONLORA_ACCOUNT", "account"),
        ("PRONLORA_QOS", "qos"),
    ):
        if s.get(key):
            params[name] = s[key]
    if res.get("gres"):
        params["gres"] = res["gres"]
    if res.get("mem"):
        params["mem"] = res["mem"]
    ex.update_parameters(**params)
    return ex


def submit(plan: Plan, kind: str) -> dict[str, Any]:
    """Submit the chain; a scheduler that refuses is an EnvironmentProblem naming its answer."""
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    missing = [c for c in ("sbatch", "srun") if shutil.which(c) is None]
    if kind == "slurm" and missing:
        raise EnvironmentProblem(
            f"no Slurm here ({', '.join(missing)} not on PATH): submit from a login node, or "
            "use --executor local to run the chain on this machine"
        )
    made = not Path(plan.run_dir).exists()
    submitted: list[submitit.Job] = []
    try:
        return _submit(plan, kind, submitted)
    except (FailedJobError, FailedSubmissionError, FileNotFoundError) as exc:
        if kind != "slurm":
            raise
        for job in submitted:
            job.cancel(check=False)
        if made:
            shutil.rmtree(plan.run_dir, ignore_errors=True)
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise EnvironmentProblem(
            f"Slurm refused the submission ({detail}); is the controller reachable from this "
            "host (`sinfo`)? Nothing of this chain is left queued."
        ) from None


def _submit(plan: Plan, kind: str, submitted: list[submitit.Job]) -> dict[str, Any]:
    """Submit the chain; on the local executor each stage waits for the previous one."""
    s = plan.settings
    os.environ.update({k: v for k, v in s.items() if k.startswith("PRONLORA_")})
    Path(plan.run_dir).mkdir(parents=True, exist_ok=True)
    jobs: dict[str, Any] = {}
    last = None

    def depend(ex: submitit.Executor) -> None:
        if kind == "slurm" and last is not None:
            job_id = last.job_id.split("_")[0]
            ex.update_parameters(additional_parameters={"dependency": f"afterok:{job_id}"})

    for stage in plan.stages:
        ex = _executor(kind, plan, stage)
        depend(ex)
        name = stage["name"]
        if name == "prep":
            job = ex.submit(
                PrepStage(s["PRONLORA_DATA_SOURCE"], s["PRONLORA_DATA"], s["PRONLORA_PREPARED"])
            )
        elif name == "train":
            job = ex.submit(
                TrainStage(
                    plan.config,
                    plan.overrides,
                    s["PRONLORA_PREPARED"],
                    s["PRONLORA_MODEL"],
                    plan.run_dir,
                )
            )
        elif name == "infer":
            pairs = [(c, i) for c in plan.checkpoints for i in range(plan.shards)]
            task = InferTask(plan.run_dir, s["PRONLORA_PREPARED"], plan.shards)
            array = ex.map_array(task, [c for c, _ in pairs], [i for _, i in pairs])
            job = array[0]
            jobs["infer_array"] = [j.job_id for j in array]
        else:
            job = ex.submit(CollectStage(s["PRONLORA_PREPARED"], plan.run_dir))
        submitted.extend(array if name == "infer" else [job])
        jobs[name] = job.job_id
        last = job
        if kind == "local":  # no scheduler to hold the next stage: wait (raises on failure)
            for j in array if name == "infer" else [job]:
                j.result()
    jobs["run_dir"] = plan.run_dir
    jobs["report"] = str(Path(plan.run_dir) / "report" / "report.md")
    return jobs
