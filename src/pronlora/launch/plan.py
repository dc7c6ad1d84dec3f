"""One launch plan: the jobs of a chain, built once, submitted by either backend.

``build_plan`` turns config(s), overrides and the site settings (env.sh) into typed jobs with
their resources, dependencies, arrays and requeue policy, validating everything before a job
is queued. ``slurm/pipeline.sh`` (backend ``sbatch``: the templates in ``slurm/``) and
``jobs/submit.py`` (backend ``submitit``) submit the same plan, and ``--dry-run`` prints the same
description for both.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pronlora.core.config import ConfigError, TrainConfig, accumulation_steps, load_config
from pronlora.core.decode_grid import worker_items
from pronlora.core.layout import BASE_CHECKPOINT, RunDir
from pronlora.launch.job_costs import Rate, combination, instance_counts, rate

Stage = Literal["prep", "train", "infer", "collect"]


@dataclass(frozen=True)
class TrainRun:
    """One training run of the plan and the checkpoints it evaluates."""

    name: str
    config: str
    overrides: tuple[str, ...]
    run_dir: str
    epochs: int
    evaluate: tuple[str, ...]  # checkpoint names: base, epoch-N


@dataclass(frozen=True)
class Job:
    key: str  # unique in the plan: prep, train, infer, collect (train:<run> in a grid)
    stage: Stage
    after: tuple[str, ...]
    time: str
    nodes: int = 1
    procs_per_node: int = 1  # one process (worker or rank) per GPU of the node
    gpu: bool = False  # request procs_per_node GPUs (false on CPU-only sites: PRONLORA_GRES=)
    cpus_per_task: int = 1  # per process
    mem: str = ""
    array: int = 0  # number of array tasks; 0: a single job
    requeue: bool = False  # stop signal -> checkpoint -> requeue and resume
    run: str = ""  # the TrainRun this job belongs to ("" for prep and collect)

    def describe(self) -> str:
        parts = [f"{self.key}: {self.stage}", f"time {self.time}", f"{self.nodes} node(s)"]
        unit = "GPU(s)/node" if self.gpu else "process(es)/node, no GPU"
        parts.append(f"{self.procs_per_node} {unit}")
        parts.append(f"{self.cpus_per_task} CPU(s)/process")
        if self.mem:
            parts.append(f"mem {self.mem}")
        if self.array:
            parts.append(f"array of {self.array}")
        if self.requeue:
            parts.append("requeue on stop signal")
        if self.after:
            parts.append(f"after {','.join(self.after)}")
        return ", ".join(p for p in parts if p)


@dataclass(frozen=True)
class LaunchPlan:
    runs: tuple[TrainRun, ...]
    shards: int
    gpus_per_node: int
    nodes: int
    settings: dict[str, str] = field(repr=False)
    jobs: tuple[Job, ...]
    report_dir: str
    instances: dict[str, int] = field(default_factory=dict)  # per split, for the estimate
    counted_from: str = ""

    @property
    def root(self) -> Path:
        """Where the plan's own files go: the grid dir, or the single run's dir."""
        return Path(self.report_dir).parent

    def job(self, key: str) -> Job:
        return next(j for j in self.jobs if j.key == key)

    def run(self, name: str) -> TrainRun:
        return next(r for r in self.runs if r.name == name)

    def describe(self) -> str:
        lines = []
        for r in self.runs:
            lines.append(
                f"run {r.name}: {r.config} {' '.join(r.overrides)}".rstrip()
                + f" -> {r.run_dir} (evaluates {','.join(r.evaluate)})"
            )
        lines.append(f"report: {self.report_dir}")
        lines += [f"  {j.describe()}" for j in self.jobs]
        lines += self.estimate_lines()
        return "\n".join(lines)

    def estimates(self) -> dict[str, tuple[float | None, str]]:
        """Wall seconds of each GPU job (array tasks as ``key[i]``, each worker's checkpoints as
        ``worker_items`` deals them) from the measured rates, with the rate's source; None where
        no rate was measured for the run's combination."""
        out: dict[str, tuple[float | None, str]] = {}
        n_train, n_test = self.instances.get("train", 0), self.instances.get("test", 0)
        for job in self.jobs:
            if job.stage not in ("train", "infer"):
                continue
            cfg = load_config(self.run(job.run).config, list(self.run(job.run).overrides))
            r = rate(job.stage, cfg)
            note = r.source if r else f"no measured rate for {combination(cfg)}"
            if job.stage == "train":
                gpus = job.nodes * job.procs_per_node
                # data-parallel: each GPU takes 1/gpus of the steps (its overhead not included)
                sec = r.seconds(math.ceil(n_train / gpus), self.run(job.run).epochs) if r else None
                out[job.key] = (sec, note)
                continue
            per_shard = math.ceil(n_test / self.shards)
            evaluate = list(self.run(job.run).evaluate)
            workers = max(job.array, 1) * job.procs_per_node
            for task in range(max(job.array, 1)):
                if r is None:
                    out[f"{job.key}[{task}]"] = (None, note)
                    continue
                first = task * job.procs_per_node
                walls = [
                    _worker_seconds(
                        r, worker_items(evaluate, self.shards, w, workers), cfg, per_shard
                    )
                    for w in range(first, first + job.procs_per_node)
                ]
                # the task holds its GPUs until its slowest worker is done
                out[f"{job.key}[{task}]"] = (max(walls), note)
        return out

    def estimate_lines(self) -> list[str]:
        """One line per GPU job (its array tasks summed) and a total, each naming its rate."""
        if not any(j.gpu for j in self.jobs):
            return [
                "estimate: none: no job asks for a GPU here (PRONLORA_GRES is empty); the "
                "measured rates are for GPUs"
            ]
        est = self.estimates()
        lines = [
            f"estimate from measured rates, one GPU per process ({self.instances.get('train', 0)} "
            f"training and {self.instances.get('test', 0)} test instances: {self.counted_from}):"
        ]
        gpu_h = {"train": 0.0, "infer": 0.0}
        missing = False
        for job in self.jobs:
            mine = [v for k, v in est.items() if k == job.key or k.startswith(f"{job.key}[")]
            if not mine:
                continue
            note = mine[0][1]
            if any(sec is None for sec, _ in mine):
                missing = True
                lines.append(f"estimate {job.key}: {note}")
                continue
            total = sum(sec or 0 for sec, _ in mine)
            gpu_h[job.stage] += total * job.nodes * job.procs_per_node / 3600
            tasks = f" in {len(mine)} task{'s' * (len(mine) != 1)}" if job.array else ""
            lines.append(f"estimate {job.key}: {total / 60:.1f} min{tasks} ({note})")
        if missing:
            lines.append("estimate total: none (bench/rates.sh measures a missing rate)")
        else:
            lines.append(
                f"estimate total: {gpu_h['train']:.2f} GPU-h training + {gpu_h['infer']:.2f} "
                "GPU-h inference (data-parallel overhead and queue time not included)"
            )
        return lines


def _worker_seconds(
    r: Rate, items: list[tuple[str, int]], cfg: TrainConfig, per_shard: int
) -> float:
    """A decode worker's items: its first checkpoint at the first-checkpoint rate, each next one
    swapped in (model/adapter_swap.py) unless it must load afresh (an Unfreeze run's base)."""
    return sum(
        r.seconds(per_shard)
        if i == 0 or (c == BASE_CHECKPOINT and cfg.strategy == "unfreeze")
        else r.next_seconds(per_shard)
        for i, (c, _) in enumerate(items)
    )


def _positive(value: int | None, what: str, default: str | None) -> int:
    raw = value if value is not None else default
    try:
        n = int(raw) if raw not in (None, "") else 1
    except ValueError:
        raise ConfigError(f"{what} must be a positive integer, got {raw!r}") from None
    if n < 1:
        raise ConfigError(f"{what} must be a positive integer, got {n}")
    return n


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
) -> LaunchPlan:
    """The chain prep -> train -> infer (array) -> collect for one config."""
    cfg = load_config(config, overrides)  # validated before anything is submitted
    epochs = epochs or list(range(1, cfg.epochs + 1))
    bad = [e for e in epochs if not 1 <= e <= cfg.epochs]
    if bad:
        raise ConfigError(f"--epochs: {bad[0]} is not an epoch of {cfg.name} (1..{cfg.epochs})")
    if run_dir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = str(Path(_setting(settings, "PRONLORA_RUNS")) / f"{cfg.name}-{stamp}")
    run = TrainRun(
        name=cfg.name,
        config=config,
        overrides=tuple(overrides),
        run_dir=str(RunDir(Path(run_dir)).root),
        epochs=cfg.epochs,
        evaluate=(BASE_CHECKPOINT, *(f"epoch-{e}" for e in epochs)),
    )
    return plan_runs([run], shards, settings, prep, nodes, gpus_per_node, run.run_dir)


def check_inputs(settings: dict[str, str], prep: bool) -> list[str]:
    """What the plan will use, each checked now (exit 2 naming a missing one), as lines to print:
    the snapshot (``get_model.py --check``'s offline check), the corpus or the prepared dir,
    where run dirs go, and the image or Python the jobs run in."""
    from pronlora.core.errors import DataError
    from pronlora.core.layout import PreparedDir
    from pronlora.model.snapshot import check_snapshot, describe_snapshot

    model = Path(_setting(settings, "PRONLORA_MODEL"))
    check_snapshot(model)
    lines = [f"snapshot: {model} ({describe_snapshot(model)})"]
    prepared = Path(_setting(settings, "PRONLORA_PREPARED"))
    if prep:
        data = settings.get("PRONLORA_DATA", "")
        source = settings.get("PRONLORA_DATA_SOURCE") or "kaldi"
        if not data or (source == "kaldi" and not Path(data).is_dir()):
            raise DataError(f"PRONLORA_DATA={data}: no such corpus directory (env.sh)")
        lines.append(f"corpus: {data} ({source}) -> prepared dir {prepared}")
    else:
        digest = PreparedDir(prepared).verified_hash()
        lines.append(f"prepared dir: {prepared} (content hash {digest[:12]}, verified)")
    lines.append(f"runs under: {_setting(settings, 'PRONLORA_RUNS')}")
    image = settings.get("PRONLORA_CONTAINER", "")
    # inside the image (pipeline.sh builds the plan there) the host's path to it is not visible
    inside = bool(os.environ.get("APPTAINER_CONTAINER"))
    if image and not inside and not Path(image).is_file():
        raise DataError(f"PRONLORA_CONTAINER={image}: no such image file (env.sh)")
    python = settings.get("PRONLORA_PYTHON") or "python3"
    lines.append(f"jobs run in: {f'the image {image}' if image else python}")
    return lines


def _setting(settings: dict[str, str], key: str) -> str:
    if not settings.get(key):
        raise ConfigError(f"env.sh: {key} is empty")
    return settings[key]


def plan_runs(
    runs: list[TrainRun],
    shards: int,
    settings: dict[str, str],
    prep: bool,
    nodes: int | None,
    gpus_per_node: int | None,
    report_root: str,
) -> LaunchPlan:
    """Jobs for several training runs: each trains and decodes its checkpoints; one collect."""
    shards = _positive(shards, "--shards", None)
    nodes = _positive(nodes, "--nodes", settings.get("PRONLORA_NODES"))
    gpus = _positive(gpus_per_node, "--gpus-per-node", settings.get("PRONLORA_GPUS_PER_NODE"))
    for key in ("PRONLORA_PREPARED", "PRONLORA_MODEL", "PRONLORA_RUNS"):
        _setting(settings, key)
    for r in runs:
        accumulation_steps(load_config(r.config, list(r.overrides)), nodes * gpus)
    instances, counted_from = instance_counts(settings, prep)
    gpu_jobs = bool(settings.get("PRONLORA_GRES"))
    per_gpu_cpus = int(settings.get("PRONLORA_CPUS_PER_TASK") or 1)
    gpu_res = {"cpus_per_task": per_gpu_cpus, "mem": settings.get("PRONLORA_MEM", "")}
    jobs: list[Job] = []
    if prep:
        jobs.append(Job("prep", "prep", (), settings["PRONLORA_TIME_PREP"], cpus_per_task=2))
    infer_keys = []
    multi = len(runs) > 1
    for r in runs:
        suffix = f":{r.name}" if multi else ""
        train_key, infer_key = f"train{suffix}", f"infer{suffix}"
        jobs.append(
            Job(
                train_key,
                "train",
                ("prep",) if prep else (),
                settings["PRONLORA_TIME_TRAIN"],
                nodes=nodes,
                procs_per_node=gpus,
                gpu=gpu_jobs,
                requeue=True,
                run=r.name,
                **gpu_res,
            )
        )
        jobs.append(
            Job(
                infer_key,
                "infer",
                (train_key,),
                settings["PRONLORA_TIME_INFER"],
                procs_per_node=gpus,
                gpu=gpu_jobs,
                # G workers per task, one per GPU; a worker per shard decodes every checkpoint
                # of its shard in one load (core/decode_grid.py)
                array=math.ceil(shards / gpus),
                requeue=True,
                run=r.name,
                **gpu_res,
            )
        )
        infer_keys.append(infer_key)
    collect_time = settings["PRONLORA_TIME_COLLECT"]
    jobs.append(Job("collect", "collect", tuple(infer_keys), collect_time, cpus_per_task=2))
    return LaunchPlan(
        runs=tuple(runs),
        shards=shards,
        gpus_per_node=gpus,
        nodes=nodes,
        settings=settings,
        jobs=tuple(jobs),
        report_dir=str(Path(report_root) / "report"),
        instances=instances,
        counted_from=counted_from,
    )
