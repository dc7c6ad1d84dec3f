"""jobs/status.py's reading of run dirs and of sacct (the real-Slurm test, with scontrol, is
test_slurm.py::test_status_names_running_finished_and_failed_jobs; CI's Slurm keeps no
accounting, so sacct is played here by a script printing what sacct -P prints)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pronlora.core.atomic import write_json
from pronlora.launch.plan import build_plan
from pronlora.launch.status import describe, grid_status
from pronlora.launch.submission import record_job_ids, record_submission
from pronlora.launch.submitit_backend import site_settings

from .conftest import REPO

SACCT = """#!/bin/sh
# the columns status asks for: JobID,JobName,State,ExitCode,ElapsedRaw,AllocTRES
echo "$@" > "$(dirname "$0")/args"
echo '100|pronlora-train|COMPLETED|0:0|3600|billing=1,cpu=8,gres/gpu=2,mem=64G,node=1'
echo '101_0|pronlora-infer|FAILED|1:0|1800|cpu=8,gres/gpu:h100=1,node=1'
echo '101_1|pronlora-infer|CANCELLED by 0|0:15|36|cpu=8,gres/gpu=1,node=1'
echo '101_2|pronlora-infer|RUNNING|0:0|0|cpu=8,gres/gpu=1,node=1'
"""


@pytest.fixture
def submitted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PRONLORA_GRES", "gpu:1")
    run = tmp_path / "run"
    plan = build_plan("smoke", ["epochs=2"], None, 1, str(run), site_settings(REPO))
    record_submission(plan, "slurm", ["python", "jobs/submit.py", "--run-dir", str(run)])
    record_job_ids(run, {"prep": "99", "train": "100", "infer": "101"})
    # a run half-way: epoch 1 saved, step 10 of 40 logged, one checkpoint decoded
    (run / "checkpoints" / "epoch-1").mkdir(parents=True)
    log = [{"step": s, "time_s": 2.0 * s, "loss": 10.0 - s / 10} for s in (5, 10)]
    # the job is appending step 15 as status reads: its half-line is not an entry yet
    half = '{"step": 15, "time'
    (run / "train_log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in log) + half)
    write_json(run / "trainer" / "checkpoint-10" / "trainer_state.json", {"max_steps": 40})
    pred = run / "predictions" / "base"
    pred.mkdir(parents=True)
    (pred / "shard-0-of-1.jsonl").write_text("{}\n{}\n{}\n")
    write_json(pred / "shard-0-of-1.done.json", {})
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sacct").write_text(SACCT)
    (bin_dir / "sacct").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return run


def test_status_reads_progress_states_logs_and_gpu_hours(submitted: Path) -> None:
    status = grid_status(submitted)
    assert "-j 99,100,101 " in (submitted.parent / "bin" / "args").read_text()
    assert status["job_states_from"] == "sacct"
    # 2 GPUs x 1 h + 1 GPU x 0.5 h + 1 GPU x 36 s
    assert status["gpu_hours_used"] == pytest.approx(2.51, abs=1e-3)
    assert status["gpu_hours_estimated"] is None  # no measured rate for the smoke config
    r = status["runs"]["smoke"]
    assert (r["epochs_done"], r["epochs"], r["step"], r["steps"]) == (1, 2, 10, 40)
    assert r["time_left_s"] == 60  # 2 s a step, 30 steps to go
    assert r["inference"]["base"] == {"shards_done": 1, "shards": 1, "answers": 3}
    assert r["inference"]["epoch-1"]["shards_done"] == 0
    text = describe(status)
    assert "run smoke: 1 of 2 epochs, step 10 of 40, about 1.0 min left, last loss 9" in text
    assert "infer: 101_0 FAILED, 30.0 min, exit 1:0" in text
    assert "infer: 101_1 CANCELLED, 0.6 min, exit 0:15" in text  # "CANCELLED by 0"
    assert f"infer (101_0): {submitted / 'submitit' / '101_0_0_log.err'}" in text
    assert "prep: 99" in text  # sacct had no line for it: shown without a state
    assert f"resume: python jobs/submit.py --run-dir {submitted}" in text


def test_a_dir_nothing_was_submitted_into_is_exit_2_naming_it(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "status.py"), str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and f"{tmp_path}: no submission.json" in proc.stderr
    (tmp_path / "submission.json").write_text("{}")
    (tmp_path / "job_ids.txt").write_text("prep=1\ntrain\n")
    proc = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "status.py"), str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "job_ids.txt, line 2: expected key=job id" in proc.stderr


def test_a_local_grid_reads_its_jobs_from_job_times(submitted: Path) -> None:
    plan = json.loads((submitted / "submission.json").read_text())
    write_json(submitted / "submission.json", plan | {"backend": "local"})
    (submitted / "job_times.jsonl").write_text(
        '{"job": "prep", "stage": "prep", "wall_s": 2.0}\n'
        '{"job": "train", "stage": "train", "wall_s": 1800.0}\n'
        '{"job": "infer[0]", "stage": "infer", "wall_s": 360.0}\n'
    )
    status = grid_status(submitted)
    assert status["job_states_from"] == "job_times.jsonl"
    assert status["gpu_hours_used"] == pytest.approx(0.6)  # one GPU each: 30 min + 6 min
    text = describe(status)
    assert "train: 100 COMPLETED, 30.0 min" in text and "infer: 101[0] COMPLETED, 6.0 min" in text
    assert "collect: not submitted" in text
