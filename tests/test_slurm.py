"""End to end on a real Slurm (started by .ci/run): slurm/pipeline.sh with a requeue mid-training,
and jobs/submit.py --executor slurm. Skipped unless PRONLORA_SLURM_TESTS=1."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pronlora.core.atomic import read_jsonl
from pronlora.core.config import load_config
from pronlora.data.prep import prepare
from pronlora.devtools.synthetic_corpus import make_demo_corpus
from pronlora.train.recipe import train

from .conftest import REPO

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(
        os.environ.get("PRONLORA_SLURM_TESTS") != "1",
        reason="needs the Slurm daemons that .ci/run starts (PRONLORA_SLURM_TESTS=1)",
    ),
]


def _job_state(job_id: str) -> str:
    out = subprocess.run(
        ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True
    ).stdout
    m = re.search(r"JobState=(\S+)", out)
    return m.group(1) if m else "GONE"


def _cpus_allocated() -> int:
    out = subprocess.run(["scontrol", "show", "node"], capture_output=True, text=True).stdout
    return sum(int(n) for n in re.findall(r"CPUAlloc=(\d+)", out))  # over all nodes


def _wait(job_ids: list[str], timeout: float = 600) -> None:
    end = time.time() + timeout
    while time.time() < end:
        states = [_job_state(j) for j in job_ids]
        if all(s in ("COMPLETED", "GONE") for s in states):
            return
        bad = [
            s
            for s in states
            if s in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")
        ]
        assert not bad, f"jobs {job_ids} ended {states}"
        time.sleep(1)
    raise AssertionError(f"jobs {job_ids} still {[_job_state(j) for j in job_ids]}")


def _wait_for_step(run_dir: Path, job: str, step: int) -> None:
    log = run_dir / "train_log.jsonl"
    end = time.time() + 300
    while time.time() < end:
        if log.is_file() and any(e.get("step", 0) >= step for e in read_jsonl(log)):
            return
        assert _job_state(job) in ("PENDING", "RUNNING"), _job_state(job)
        time.sleep(0.2)
    raise AssertionError(f"job {job} did not reach step {step}")


def _release_requeued(job: str) -> None:
    end = time.time() + 120
    while _job_state(job) != "PENDING" and time.time() < end:
        time.sleep(0.5)
    # Slurm holds a requeued job ~2 min; release it early, but only once the old batch step has
    # left the node (releasing sooner makes slurmd refuse the relaunch: credential revoked).
    end = time.time() + 120
    while _cpus_allocated() and time.time() < end:
        time.sleep(0.5)
    time.sleep(2)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)


def _submitted(site: dict[str, str], *args: str) -> dict[str, str]:
    """slurm/pipeline.sh's key=value lines (run_dir, <job>_job, report)."""
    out = subprocess.run(
        [str(REPO / "slurm" / "pipeline.sh"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **site},
        check=True,
    ).stdout
    lines = [line for line in out.splitlines() if re.match(r"^\w+=", line)]
    return dict(line.split("=", 1) for line in lines)


def _pipeline(site: dict[str, str], run_dir: Path, *args: str) -> dict[str, str]:
    return _submitted(site, "--config", "smoke", "--run-dir", str(run_dir), *args)


@pytest.fixture(scope="module")
def site(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    subprocess.run(["sinfo"], check=True, capture_output=True)
    root = tmp_path_factory.mktemp("site")
    corpus = make_demo_corpus(root / "corpus", utterances=24, seed=5)  # 32 train instances
    # prepared here once; the pipeline and grid tests also run the prep job, the others skip it
    prepare("kaldi", corpus, root / "prepared")
    env = {
        "PRONLORA_GRES": "",
        "PRONLORA_MEM": "",
        "PRONLORA_CPUS_PER_TASK": "1",
        "PRONLORA_PYTHON": sys.executable,
        "PRONLORA_DATA": str(corpus),
        "PRONLORA_PREPARED": str(root / "prepared"),
        "PRONLORA_MODEL": str(tiny_model),
        "PRONLORA_RUNS": str(root / "runs"),
        "PRONLORA_SIGNAL_GRACE_S": "60",
    }
    return env


def _report_ok(run_dir: Path, prepared: Path, checkpoints: list[str]) -> None:
    metrics = json.loads((run_dir / "report" / "metrics.json").read_text())
    assert sorted(m["checkpoint"] for m in metrics) == sorted(checkpoints)
    n_apa = sum(r["task"] == "APA" for r in read_jsonl(prepared / "test.jsonl"))
    assert all(m["n_apa"] == n_apa and not m["partial"] for m in metrics)
    assert "random-weight model" in (run_dir / "report" / "report.md").read_text()


def test_submitit_chain_stops_on_its_time_limit_signal_and_resumes(
    site: dict[str, str], tmp_path: Path
) -> None:
    """The submitit backend follows the sbatch backend's protocol (stopping.py): on USR2 both
    tasks finish the step and save a checkpoint, then submitit requeues the stage."""
    env = {**os.environ, **site}
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "jobs" / "submit.py"),
            "--config",
            "smoke",
            "--executor",
            "slurm",
            "--no-prep",
            "--gpus-per-node",
            "2",  # two submitit tasks train together (gloo on this CPU-only node)
            "--run-dir",
            str(run_dir),
            "--set",
            "epochs=1",
            "--set",
            "save_steps=100",  # the resume point can only be the checkpoint of the stop
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    jobs = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    train_job = jobs["train_job"]
    _wait_for_step(run_dir, train_job, 2)
    # what Slurm sends submitit's tasks signal_delay_s before the time limit (--signal=USR2@...)
    subprocess.run(["scancel", "--signal=USR2", train_job], check=True)
    _release_requeued(train_job)
    _wait([train_job, jobs["infer_job"].split("_")[0], jobs["collect_job"]])

    logs = "\n".join(p.read_text() for p in (run_dir / "submitit").glob(f"{train_job}_*.err"))
    assert "received SIGUSR2" in logs and "resuming from" in logs, logs[-3000:]
    assert "Requeued job" in logs, logs[-3000:]
    _report_ok(run_dir, Path(site["PRONLORA_PREPARED"]), ["base", "epoch-1"])
    last = sorted((run_dir / "trainer").glob("checkpoint-*"))[-1]
    assert json.loads((last / "parallel.json").read_text()) == {"engine": "zero2", "world_size": 2}


def test_two_process_training_stops_on_the_time_limit_signal_and_resumes(
    site: dict[str, str], tmp_path: Path
) -> None:
    # 2 processes per node (CPU-only: gloo), ZeRO-2; infer: 2 workers per array task. No
    # dropout: ranks draw different random streams than one process, the rest must agree.
    overrides = ["epochs=1", "micro_batch=1", "grad_accum=2", "save_steps=2", "lora.dropout=0.0"]
    sets = [a for o in overrides for a in ("--set", o)]
    ids = _pipeline(site, tmp_path / "run", "--no-prep", "--gpus-per-node", "2", *sets)
    run_dir, train_job = Path(ids["run_dir"]), ids["train_job"]
    _wait_for_step(run_dir, train_job, 3)
    # what Slurm does PRONLORA_SIGNAL_GRACE_S before the time limit (--signal=B:USR1@...)
    subprocess.run(["scancel", "--signal=USR1", "--batch", train_job], check=True)
    _release_requeued(train_job)
    _wait([train_job, ids["infer_job"], ids["collect_job"]])

    out = "\n".join(p.read_text() for p in (run_dir / "logs").glob("pronlora-train-*.out"))
    assert "1 node(s) x 2 process(es)" in out and "asking the ranks to stop" in out, out[-3000:]
    assert "stop requested (stop file)" in out and "requeueing job" in out, out[-3000:]
    assert "resuming from" in out and "2 process(es), engine zero2" in out, out[-3000:]
    _report_ok(run_dir, Path(site["PRONLORA_PREPARED"]), ["base", "epoch-1"])

    reference = tmp_path / "uninterrupted"
    cfg = load_config("smoke", overrides)
    assert train(cfg, site["PRONLORA_PREPARED"], site["PRONLORA_MODEL"], reference) == 0
    for epoch in (1,):
        name = f"checkpoints/epoch-{epoch}/adapter_model.safetensors"
        a, b = load_file(str(reference / name)), load_file(str(run_dir / name))
        assert a.keys() == b.keys()
        for k in a:  # gloo's reduction order: float-level differences at most
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5)


def test_training_over_two_nodes(site: dict[str, str], tmp_path: Path) -> None:
    # one torchrun per node through srun, c10d rendezvous on the first node's address
    overrides = ["epochs=1", "micro_batch=1", "grad_accum=2", "lora.dropout=0.0"]
    sets = [a for o in overrides for a in ("--set", o)]
    ids = _pipeline(
        site, tmp_path / "run", "--no-prep", "--nodes", "2", "--gpus-per-node", "1", *sets
    )
    run_dir = Path(ids["run_dir"])
    _wait([ids["train_job"], ids["infer_job"], ids["collect_job"]])
    out = "\n".join(p.read_text() for p in (run_dir / "logs").glob("pronlora-train-*.out"))
    assert "2 node(s) x 1 process(es)" in out and "2 process(es), engine zero2" in out, out[-3000:]
    last = sorted((run_dir / "trainer").glob("checkpoint-*"))[-1]
    assert json.loads((last / "parallel.json").read_text()) == {"engine": "zero2", "world_size": 2}
    # the ranks of both nodes end with the same adapter (that 2 ranks reproduce one process is
    # tested without Slurm in test_distributed.py, and through Slurm on one node above)
    assert "adapter weights identical on all 2 ranks" in out, out[-3000:]
    _report_ok(run_dir, Path(site["PRONLORA_PREPARED"]), ["base", "epoch-1"])


def test_table3_grid_through_pipeline_survives_a_requeue_mid_training(
    site: dict[str, str], tmp_path: Path
) -> None:
    """The experiment with the smoke recipe, 1 epoch per run: prep, 2 trainings, 2 inference
    arrays (base decoded once), one collect over both runs; the LoRA run's training is
    requeued (scontrol) once it has taken a few steps, and must end as an uninterrupted run.
    Submitted as from a login node with only sbatch and apptainer: no Python with pronlora on
    the host; the plan is built in the "image" (tests/standin/apptainer runs the project's venv)
    and every job runs through the templates' container path."""
    sets = ["--set", "epochs=1", "--set", "save_steps=2"]
    args = ["--experiment", "table3", "--config", "smoke", "--run-dir", str(tmp_path / "t3")]
    image = tmp_path / "pronlora.sif"
    image.write_text("stand-in image")
    login_node = {
        **site,
        "PATH": f"{REPO / 'tests' / 'standin'}:{os.environ['PATH']}",
        "PRONLORA_CONTAINER": str(image),
        "PRONLORA_PYTHON": "/nonexistent/python3",
        "STANDIN_PYTHON": sys.executable,
    }
    ids = _submitted(login_node, *args, *sets)
    jobs = [v for k, v in ids.items() if k.endswith("_job")]
    assert len(jobs) == 6, ids  # prep, train x2, infer x2, collect
    lora = tmp_path / "t3" / "lora"
    _wait_for_step(lora, ids["train_lora_job"], 4)
    subprocess.run(["scontrol", "requeue", ids["train_lora_job"]], check=True)
    _release_requeued(ids["train_lora_job"])
    _wait(jobs)

    train_out = "\n".join(p.read_text() for p in (lora / "logs").glob("pronlora-train-*.out"))
    assert "received SIGTERM" in train_out and "resuming from" in train_out, train_out[-3000:]
    reference = tmp_path / "uninterrupted"
    cfg = load_config(str(lora / "config.yaml"))
    assert train(cfg, site["PRONLORA_PREPARED"], site["PRONLORA_MODEL"], reference) == 0
    name = "checkpoints/epoch-1/adapter_model.safetensors"
    a, b = load_file(str(reference / name)), load_file(str(lora / name))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    metrics = json.loads((tmp_path / "t3" / "report" / "metrics.json").read_text())
    rows = sorted((m["run"], m["checkpoint"]) for m in metrics)
    assert rows == [("lora", "base"), ("lora", "epoch-1"), ("unfreeze", "epoch-1")]
    assert all("ci95" in m for m in metrics)
    assert "Unfreeze" in (tmp_path / "t3" / "report" / "table3.md").read_text()
    # the emitted script recorded every job id; status, run as the login node runs it
    recorded = (tmp_path / "t3" / "job_ids.txt").read_text().split()
    assert sorted(line.split("=")[1] for line in recorded) == sorted(jobs)
    status = subprocess.run(
        [str(REPO / "slurm" / "pipeline.sh"), "--status", str(tmp_path / "t3")],
        capture_output=True,
        text=True,
        env={**os.environ, **login_node},
        check=True,
    ).stdout
    assert "run lora: 1 of 1 epochs, training done" in status
    assert "collect: written" in status and "FAILED" not in status
    assert f"train:lora: {ids['train_lora_job']} COMPLETED" in status


def test_status_names_running_finished_and_failed_jobs(
    site: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """jobs/status.py against this Slurm (no accounting here: states from scontrol)."""
    from pronlora.launch.plan import build_plan
    from pronlora.launch.submission import record_job_ids, record_submission
    from pronlora.launch.submitit_backend import site_settings

    for key, value in site.items():
        monkeypatch.setenv(key, value)
    run = tmp_path / "run"
    plan = build_plan("smoke", ["epochs=2"], None, 1, str(run), site_settings(REPO))
    record_submission(
        plan, "sbatch", ["slurm/pipeline.sh", "--config", "smoke", "--run-dir", str(run)]
    )
    (run / "logs").mkdir()
    ids = {}
    for key, script in (("prep", "true"), ("train", "echo boom; exit 3"), ("infer", "sleep 120")):
        ids[key] = subprocess.run(
            [
                "sbatch",
                "--parsable",
                f"--job-name=pronlora-{key}",
                f"--chdir={tmp_path}",
                f"--output={run / 'logs' / '%x-%j.out'}",
                "--wrap",
                script,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    record_job_ids(run, ids)
    try:
        end = time.time() + 120
        want = {"prep": "COMPLETED", "train": "FAILED", "infer": "RUNNING"}
        while {k: _job_state(ids[k]) for k in want} != want:
            assert time.time() < end, {k: _job_state(ids[k]) for k in want}
            time.sleep(0.5)
        out = subprocess.run(
            [str(REPO / "slurm" / "pipeline.sh"), "--status", str(run)],
            capture_output=True,
            text=True,
            env={**os.environ, **site},
            check=True,
        ).stdout
        assert f"prep: {ids['prep']} COMPLETED" in out
        assert f"infer: {ids['infer']} RUNNING" in out
        assert re.search(rf"train: {ids['train']} FAILED, [\d.]+ min, exit 3:0", out), out
        log = run / "logs" / f"pronlora-train-{ids['train']}.out"
        assert f"train ({ids['train']}): {log}" in out and "boom" in log.read_text()
        assert f"resume: slurm/pipeline.sh --config smoke --run-dir {run}" in out
        assert (
            "collect: not submitted" in out
            and "run smoke: 0 of 2 epochs, training not started" in out
        )
        status = json.loads(
            subprocess.run(
                [sys.executable, str(REPO / "jobs" / "status.py"), str(run), "--json"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        assert status["job_states_from"] == "scontrol"
        assert [j["allocations"][0]["state"] for j in status["jobs"][:3]] == list(want.values())
    finally:
        subprocess.run(["scancel", *ids.values()], check=False)
