"""Tracking: which trackers a config may name, and one tracked run per run dir across jobs.

The TensorBoard stream of a stopped and resumed run is tested in test_train.py
(test_signal_mid_epoch_then_resume_equals_uninterrupted); collect's in test_collect.py.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from pronlora.core.config import ConfigError, load_config
from pronlora.core.layout import RunDir
from pronlora.train.inputs import check_trackers
from pronlora.train.tracking import integration_trackers, tracking_env


@pytest.mark.parametrize("value", ["comet", "none,wandb", " , ", "tensorboard;wandb"])
def test_report_to_outside_the_known_trackers_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="report_to"):
        load_config("smoke", [f"report_to={value}"])


def test_a_tracker_that_is_not_installed_is_refused_before_training() -> None:
    missing = [t for t in ("wandb", "mlflow") if importlib.util.find_spec(t) is None]
    if not missing:
        pytest.skip("both wandb and mlflow are installed here")
    cfg = load_config("smoke", [f"report_to=tensorboard,{missing[0]}"])
    with pytest.raises(ConfigError, match=f"report_to: {missing[0]} needs the {missing[0]}"):
        check_trackers(cfg)
    check_trackers(load_config("smoke", ["report_to=none"]))


def test_tensorboard_is_ours_and_the_others_go_to_the_trainer() -> None:
    assert load_config("smoke").trackers == ("tensorboard",)
    assert integration_trackers(load_config("smoke", ["report_to=tensorboard,wandb"])) == ["wandb"]
    assert load_config("smoke", ["report_to=none"]).trackers == ()


def test_every_job_of_a_run_reattaches_to_its_tracked_run(tmp_path: Path) -> None:
    cfg = load_config("smoke", ["report_to=wandb,mlflow"])
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    first = tracking_env(cfg, run, {})
    assert first["WANDB_MODE"] == "offline" and first["WANDB_RESUME"] == "allow"
    assert first["MLFLOW_TRACKING_URI"] == (run.root / "mlruns").as_uri()
    assert "MLFLOW_RUN_ID" not in first  # MLflow names its run; the callback records it
    (run.tracking_json).write_text(run.tracking_json.read_text().replace("}", ', "mlflow": "abc"}'))
    again = tracking_env(cfg, run, {"WANDB_MODE": "online", "MLFLOW_TRACKING_URI": "http://m"})
    assert again["WANDB_RUN_ID"] == first["WANDB_RUN_ID"]  # the requeued job: the same run
    assert again["MLFLOW_RUN_ID"] == "abc"
    assert again["WANDB_MODE"] == "online" and again["MLFLOW_TRACKING_URI"] == "http://m"
    other = RunDir(tmp_path / "other")
    other.root.mkdir()
    assert tracking_env(cfg, other, {})["WANDB_RUN_ID"] != first["WANDB_RUN_ID"]
