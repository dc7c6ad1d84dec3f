"""A training job's inputs, checked before torch and transformers are imported.

The entry point checks them first, so a refused command exits 2 in about a second instead of
after 4-10 s of imports, and before anything is written. The recipe takes the checked inputs
(or checks them itself when called in-process) and checks the run dir again under its lock.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pronlora.core.config import EXECUTION_KEYS, ConfigError, TrainConfig, to_dict
from pronlora.core.layout import PreparedDir, RunDir
from pronlora.model.snapshot import check_snapshot

TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


@dataclass(frozen=True)
class TrainingInputs:
    """What a training job reads, as checked: the prepared train split with its manifest and
    verified content hash, and the snapshot's config."""

    prepared: Path
    model_dir: Path
    rows: list[dict[str, Any]]
    manifest: dict[str, Any]
    data_hash: str
    snapshot_config: dict[str, Any]


def check_trackers(cfg: TrainConfig) -> None:
    """Every tracker the config names can be imported."""
    for name in cfg.trackers:
        if importlib.util.find_spec(TRACKER_PACKAGES[name]) is None:
            raise ConfigError(
                f"report_to: {name} needs the {TRACKER_PACKAGES[name]} package, which this "
                f"Python lacks (pip install {TRACKER_PACKAGES[name]}, or report_to=tensorboard)"
            )


def check_training_inputs(
    cfg: TrainConfig, prepared: str | Path, model_dir: str | Path
) -> TrainingInputs:
    prepared_dir, model_dir = PreparedDir(Path(prepared)), Path(model_dir).resolve()
    rows = prepared_dir.load_split("train")
    manifest = prepared_dir.manifest()
    data_hash = prepared_dir.verified_hash()
    snapshot_config = check_snapshot(model_dir)
    check_trackers(cfg)
    return TrainingInputs(prepared_dir.root, model_dir, rows, manifest, data_hash, snapshot_config)


def check_same_run(run_dir: str | Path, cfg: TrainConfig, inputs: TrainingInputs) -> None:
    """Refuse a run dir that holds a run of another setup (config outside the execution keys,
    prepared data, model or prepared path): resuming it would mix two runs' steps."""
    run = RunDir(Path(run_dir))
    if not run.run_json.is_file():
        return
    saved = run.read_run()
    resolved = to_dict(cfg)
    diffs = [
        k for k in resolved if k not in EXECUTION_KEYS and saved["config"].get(k) != resolved[k]
    ]
    if saved.get("data_content_hash") not in (None, inputs.data_hash):
        diffs.append("the prepared data (its content hash)")
    moved = saved["model"] != str(inputs.model_dir) or saved["prepared"] != str(inputs.prepared)
    if diffs or moved:
        what = ", ".join(diffs) or "model/prepared path"
        raise ConfigError(
            f"--run-dir {run.root} holds a run with a different setup ({what} differ); "
            "use a new run dir"
        )
