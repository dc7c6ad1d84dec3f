"""Training metrics where people look: TensorBoard events in the run dir, W&B or MLflow on request.

A requeued job resumes from its last step checkpoint and replays the steps logged after it.
The TensorBoard writer of each job starts with ``purge_step`` = the resumed step + 1, so
TensorBoard's reader drops the replayed steps' older events: one continuous stream per run.
W&B and MLflow reattach to the run id kept in the run dir's ``tracking.json`` and default to
offline stores inside the run dir (compute nodes rarely reach the internet).
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from pronlora.core.atomic import write_json
from pronlora.core.config import TrainConfig
from pronlora.core.layout import RunDir, read_json_file

log = logging.getLogger(__name__)


def integration_trackers(cfg: TrainConfig) -> list[str]:
    """Trackers the Trainer's own integrations drive (TensorBoard is ours, for purge_step)."""
    return [t for t in cfg.trackers if t != "tensorboard"]


def tracked_ids(run: RunDir) -> dict[str, str]:
    return read_json_file(run.tracking_json) if run.tracking_json.is_file() else {}


def tracking_env(cfg: TrainConfig, run: RunDir, environ: dict[str, str]) -> dict[str, str]:
    """The variables W&B / MLflow read, for this run: the same run id in every job of it
    (created once, kept in ``tracking.json``) and local stores unless the user chose others."""
    env: dict[str, str] = {}
    ids = tracked_ids(run)
    if "wandb" in cfg.trackers:
        if "wandb" not in ids:
            ids["wandb"] = uuid.uuid4().hex[:16]
            write_json(run.tracking_json, ids)
        env |= {"WANDB_RUN_ID": ids["wandb"], "WANDB_RESUME": "allow", "WANDB_NAME": cfg.name}
        env.setdefault("WANDB_MODE", environ.get("WANDB_MODE", "offline"))
        env.setdefault("WANDB_DIR", environ.get("WANDB_DIR", str(run.wandb.parent)))
        env.setdefault("WANDB_PROJECT", environ.get("WANDB_PROJECT", "pronlora"))
    if "mlflow" in cfg.trackers:
        uri = environ.get("MLFLOW_TRACKING_URI", run.mlruns.as_uri())
        env |= {"MLFLOW_TRACKING_URI": uri, "MLFLOW_RUN_NAME": cfg.name}
        if "mlflow" in ids:
            env["MLFLOW_RUN_ID"] = ids["mlflow"]
    return env


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        return float(value)
    except ValueError:
        return None


class TensorBoardTracking(TrainerCallback):
    """Every logged number as ``train/<key>`` at the optimizer step (main process only)."""

    def __init__(self, run: RunDir) -> None:
        self.run = run
        self.writer: Any = None

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.run.tensorboard), purge_step=state.global_step + 1)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.writer is None:
            return
        for key, value in (logs or {}).items():
            number = _number(value)
            if number is not None:
                self.writer.add_scalar(f"train/{key}", number, state.global_step)
        self.writer.flush()

    def on_train_end(self, args, state, control, **kwargs):
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class RecordMlflowRun(TrainerCallback):
    """After MLflow's callback started its run, keep the run's id for the next job."""

    def __init__(self, run: RunDir) -> None:
        self.run = run

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        import mlflow

        active = mlflow.active_run()
        ids = tracked_ids(self.run)
        if active is not None and ids.get("mlflow") != active.info.run_id:
            write_json(self.run.tracking_json, ids | {"mlflow": active.info.run_id})


def tracking_callbacks(cfg: TrainConfig, run_dir: Path) -> list[TrainerCallback]:
    run = RunDir(run_dir)
    out: list[TrainerCallback] = []
    if "tensorboard" in cfg.trackers:
        out.append(TensorBoardTracking(run))
    if "mlflow" in cfg.trackers:
        out.append(RecordMlflowRun(run))
    return out


def start_tracking(cfg: TrainConfig, run_dir: Path) -> None:
    """Set the W&B / MLflow variables for this process (main process; before the Trainer)."""
    env = tracking_env(cfg, RunDir(run_dir), dict(os.environ))
    os.environ.update(env)
    if env:
        log.info("tracking: %s", ", ".join(f"{k}={v}" for k, v in sorted(env.items())))
