"""Static checks of the Slurm scripts, the submitit plan and the container definition."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pronlora.core.errors import EnvironmentProblem
from pronlora.launch.submitit_backend import site_settings

from .conftest import REPO

SBATCH = sorted((REPO / "slurm").glob("*.sbatch"))
SHELL = [
    *SBATCH,
    REPO / "slurm" / "pipeline.sh",
    *sorted((REPO / "slurm" / "lib").glob("*.sh")),
    REPO / "env.sh",
    REPO / "demo.sh",
    REPO / "tools" / "install.sh",
    REPO / "containers" / "build.sh",
    REPO / "containers" / "smoke.sh",
    REPO / "tests" / "standin" / "apptainer",
    *sorted((REPO / "bench").glob("*.sh")),
    REPO / ".ci" / "slurm.sh",
    REPO / "tests" / "run.sh",
    REPO / "tests" / "run_upper.sh",
]


def test_expected_scripts_exist() -> None:
    names = {p.name for p in SBATCH}
    assert {
        "prep.sbatch",
        "train_paper_r64.sbatch",
        "train_pretrained_r320.sbatch",
        "train.sbatch",
        "infer.sbatch",
        "collect.sbatch",
    } <= names


@pytest.mark.parametrize("script", SBATCH, ids=lambda p: p.name)
def test_sbatch_lines_are_literal_and_site_free(script: Path) -> None:
    lines = [line for line in script.read_text().splitlines() if line.startswith("#SBATCH")]
    assert lines, "no #SBATCH lines"
    for line in lines:
        assert "$" not in line and "`" not in line, f"{script.name}: not literal: {line}"
        # site settings (partition, account, QOS, GPUs, memory) come from env.sh, never here
        assert not re.search(r"--(partition|account|qos|gres|gpus|mem)\b", line), line
    text = script.read_text()
    assert "slurm/lib/" in text, "every sbatch script loads env.sh through slurm/lib"


def test_training_wrappers_are_thin() -> None:
    for name in ("train_paper_r64.sbatch", "train_pretrained_r320.sbatch"):
        text = (REPO / "slurm" / name).read_text()
        body = [line for line in text.splitlines() if line and not line.startswith("#")]
        assert len(body) == 2, body  # set the config, source the template
        assert "--requeue" in text and "--signal=B:USR1@" in text


@pytest.mark.parametrize("script", SHELL, ids=lambda p: p.name)
def test_shell_scripts_parse_and_pass_shellcheck(script: Path) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True)
    if shutil.which("shellcheck") is None:
        if os.environ.get("CI"):
            pytest.fail("shellcheck is not installed (.ci/slurm.sh install provides it)")
        pytest.skip("shellcheck not installed")
    proc = subprocess.run(
        ["shellcheck", "-x", "-P", "SCRIPTDIR", str(script)],
        capture_output=True,
        text=True,
        cwd=script.parent,
    )
    assert proc.returncode == 0, proc.stdout


@pytest.fixture(autouse=True)
def _site(tiny_model: Path, mini: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A site whose inputs exist: the dry run checks the snapshot and corpus it will use."""
    monkeypatch.setenv("PRONLORA_MODEL", str(tiny_model))
    monkeypatch.setenv("PRONLORA_DATA", str(mini))
    monkeypatch.setenv("PRONLORA_PREPARED", str(tmp_path / "site-prepared"))
    monkeypatch.setenv("PRONLORA_RUNS", str(tmp_path / "site-runs"))


def _submit(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "jobs" / "submit.py"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )


def test_submit_dry_run_prints_the_plan(tmp_path: Path) -> None:
    proc = _submit(
        "--config",
        "smoke",
        "--shards",
        "3",
        "--epochs",
        "2",
        "--dry-run",
        "--run-dir",
        str(tmp_path / "run"),
        env={"PRONLORA_GRES": "gpu:a100:1"},
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"smoke -> {tmp_path / 'run'} (evaluates base,epoch-2)" in out
    assert re.search(r"train: train, .*1 GPU\(s\)/node.*requeue on stop signal, after prep", out)
    # one task per shard, each decoding base then epoch-2 swapped in
    assert re.search(r"infer: infer, .* array of 3, .*after train", out)
    assert "collect: collect" in out and "dry run: nothing submitted" in out
    assert not (tmp_path / "run").exists()


def test_submit_plans_one_task_per_gpu_and_keeps_the_batch(tmp_path: Path) -> None:
    args = ["--config", "paper_r64", "--dry-run", "--run-dir", str(tmp_path / "run")]
    proc = _submit(
        *args, "--nodes", "2", "--gpus-per-node", "4", env={"PRONLORA_GRES": "gpu:a100:1"}
    )
    assert proc.returncode == 0, proc.stderr
    train = next(line for line in proc.stdout.splitlines() if "train:" in line)
    assert "2 node(s), 4 GPU(s)/node" in train
    infer = next(line for line in proc.stdout.splitlines() if "infer:" in line)
    assert "4 GPU(s)/node" in infer and "array of 1," in infer  # 1 shard, 4 workers
    proc = _submit(
        *args,
        "--nodes",
        "2",
        "--gpus-per-node",
        "4",
        "--executor",
        "sbatch",
        env={"PRONLORA_GRES": "gpu:a100:1"},
    )
    assert "--gres=gpu:a100:4" in proc.stdout and "--nodes=2" in proc.stdout
    # 8 x 16 ranks cannot make the paper's effective batch of 64
    proc = _submit(*args, "--nodes", "4", "--gpus-per-node", "4")
    assert proc.returncode == 2 and "micro_batch: 8 x 16 processes does not divide" in proc.stderr


def test_submit_refuses_a_bad_config_before_submitting(tmp_path: Path) -> None:
    proc = _submit("--config", "smoke", "--set", "lora.rank=4", "--dry-run")
    assert proc.returncode == 2 and "unknown key(s) lora.rank" in proc.stderr
    proc = _submit("--config", "smoke", "--epochs", "5", "--dry-run")
    assert proc.returncode == 2 and "--epochs: 5 is not an epoch of smoke" in proc.stderr


def test_pipeline_refuses_bad_arguments_before_submitting() -> None:
    # the config is validated by the project's Python before anything reaches sbatch
    env = {**os.environ, "PRONLORA_PYTHON": sys.executable}
    pipeline = str(REPO / "slurm" / "pipeline.sh")
    proc = subprocess.run(
        [pipeline, "--config", "smoke", "--set", "epochs=0"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode != 0 and "epochs: must be >= 1" in proc.stderr, proc.stderr
    proc = subprocess.run(
        [pipeline, "--config", "smoke", "--epochs", "9"], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 2 and "--epochs: 9 is not an epoch of smoke" in proc.stderr
    proc = subprocess.run(
        [pipeline, "--config", "paper_r64", "--nodes", "2", "--gpus-per-node", "8"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode != 0 and "8 x 16 processes does not divide" in proc.stderr
    proc = subprocess.run(
        [pipeline, "--config", "smoke", "--gpus-per-node", "two"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 2 and "--gpus-per-node must be a positive integer" in proc.stderr
    # the config's name names the run dir: it cannot climb out of PRONLORA_RUNS (issue 26)
    proc = subprocess.run(
        [pipeline, "--config", "smoke", "--set", "name=../../../x", "--dry-run"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 2 and "name: '../../../x' names the run dir" in proc.stderr


def test_env_sh_defaults_and_overrides() -> None:
    def settings(env: dict) -> dict:
        out = subprocess.run(
            ["bash", "-c", f"source {REPO / 'env.sh'} && env"],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        ).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    base = {"PATH": os.environ["PATH"]}
    s = settings(base)
    assert s["PRONLORA_GRES"] == "gpu:1" and s["PRONLORA_ROOT"] == str(REPO)
    s = settings({**base, "PRONLORA_GRES": "", "PRONLORA_PARTITION": "gpu-a100"})
    assert s["PRONLORA_GRES"] == "" and s["SBATCH_PARTITION"] == "gpu-a100"
    s = settings({**base, "PRONLORA_GPUS_PER_NODE": "4", "PRONLORA_NODES": "2"})
    assert s["PRONLORA_GRES"] == "gpu:4" and s["PRONLORA_NODES"] == "2"  # gres follows the count


def _pipeline(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(REPO / "slurm" / "pipeline.sh"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PRONLORA_PYTHON": sys.executable, **(env or {})},
    )


def test_pipeline_dry_run_prints_the_sbatch_commands(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = _pipeline("--config", "smoke", "--shards", "2", "--run-dir", str(run), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    sbatch = [line for line in lines if line.startswith("sbatch ")]
    assert [line.rsplit("/", 1)[1] for line in sbatch] == [
        "prep.sbatch",
        "train.sbatch",
        "infer.sbatch",
        "collect.sbatch",
    ]
    assert "--dependency=afterok:101" in sbatch[1] and "--array=0-1" in sbatch[2]
    assert "dry run: nothing submitted" in proc.stdout and not run.exists()


def test_pipeline_usage_and_config_errors_exit_2() -> None:
    proc = _pipeline("--help")
    assert proc.returncode == 0 and "set -euo" not in proc.stdout and "--dry-run" in proc.stdout
    proc = _pipeline("--config", "no_such_config", "--dry-run")
    assert proc.returncode == 2 and "no config named 'no_such_config'" in proc.stderr


def test_failed_submission_leaves_no_run_dir_and_nothing_queued(tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    log = tmp_path / "calls"
    # sbatch accepts two jobs, then the controller goes away
    (fake / "sbatch").write_text(
        f'#!/bin/bash\necho "$*" >> {log}\nn=$(wc -l < {log})\n'
        '[ "$n" -le 2 ] && { echo $((1000 + n)); exit 0; }\n'
        'echo "sbatch: error: Slurm controller not responding" >&2; exit 1\n'
    )
    (fake / "scancel").write_text(f'#!/bin/bash\necho "scancel $*" >> {log}\n')
    for f in fake.iterdir():
        f.chmod(0o755)
    run = tmp_path / "run"
    proc = _pipeline(
        "--config", "smoke", "--run-dir", str(run), env={"PATH": f"{fake}:{os.environ['PATH']}"}
    )
    assert proc.returncode != 0 and "nothing is left queued" in proc.stderr
    assert not run.exists()
    assert "scancel 1001 1002" in log.read_text()


def test_a_link_planted_at_a_runs_slurm_log_folder_is_refused(tmp_path: Path) -> None:
    """Slurm writes each job's log under <run dir>/logs/, following any link planted there."""
    run, outside = tmp_path / "run", tmp_path / "outside"
    run.mkdir()
    outside.mkdir()
    (run / "logs").symlink_to(outside)
    proc = _pipeline("--config", "smoke", "--run-dir", str(run), "--dry-run")
    assert proc.returncode == 2 and f"{run / 'logs'}: a symbolic link inside" in proc.stderr
    assert "Traceback" not in proc.stderr and list(outside.iterdir()) == []


def test_env_sh_uses_the_checkouts_venv_python() -> None:
    out = subprocess.run(
        ["bash", "-c", f"source {REPO / 'env.sh'} && echo $PRONLORA_PYTHON"],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"]},
        check=True,
    ).stdout.strip()
    venv = REPO / ".venv" / "bin" / "python"
    assert out == (str(venv) if venv.exists() else "python3")
    proc = _pipeline("--config", "smoke", "--dry-run", env={"PRONLORA_PYTHON": "/bin/false"})
    assert proc.returncode == 2 and "cannot import pronlora" in proc.stderr


def test_submit_without_a_slurm_controller_says_so_in_one_line(tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sbatch").write_text(
        '#!/bin/bash\necho "sbatch: error: Unable to contact slurm controller" >&2\nexit 1\n'
    )
    (fake / "srun").write_text("#!/bin/bash\nexit 0\n")
    for f in fake.iterdir():
        f.chmod(0o755)
    proc = _submit(
        "--config",
        "smoke",
        "--run-dir",
        str(tmp_path / "run"),
        env={"PATH": f"{fake}:{os.environ['PATH']}"},
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "Unable to contact slurm controller" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_both_backends_ask_slurm_for_the_same_resources(tmp_path: Path) -> None:
    """The sbatch templates (one torchrun task per node) and submitit (one task per GPU) spell
    a job differently; per node they must ask for the same time, GPUs, CPUs, memory, array."""
    from pronlora.launch.plan import build_plan
    from pronlora.launch.sbatch import sbatch_args
    from pronlora.launch.submitit_backend import _executor, minutes

    settings = {
        **site_settings(REPO),
        "PRONLORA_GRES": "gpu:a100:2",
        "PRONLORA_CPUS_PER_TASK": "4",
        "PRONLORA_MEM": "32G",
        "PRONLORA_PARTITION": "gpu",
    }
    overrides = ["micro_batch=1", "grad_accum=4"]
    run = str(tmp_path / "r")
    plan = build_plan("smoke", overrides, [1, 2], 2, run, settings, nodes=2, gpus_per_node=2)
    assert [j.stage for j in plan.jobs] == ["prep", "train", "infer", "collect"]
    for job in plan.jobs:
        args = sbatch_args(plan, job, {})
        opt = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
        sub = _executor("slurm", plan, job).parameters
        tasks = int(opt.get("ntasks-per-node", 1))
        assert int(opt["cpus-per-task"]) * tasks == sub["cpus_per_task"] * sub["ntasks_per_node"]
        assert opt.get("gres") == sub.get("gres"), job.key
        assert minutes(opt["time"]) == sub["time"] and opt.get("mem") == sub.get("mem")
        assert int(opt.get("nodes", 1)) == sub["nodes"] and opt["partition"] == sub["partition"]
        assert opt.get("array") == (f"0-{job.array - 1}" if job.array else None)
    train = plan.job("train")
    assert _executor("slurm", plan, train).parameters["gres"] == "gpu:a100:2"
    assert _executor("slurm", plan, train).parameters["cpus_per_task"] == 4


@pytest.mark.parametrize("seeds", [1, 3])
def test_table3_grid_plan_under_both_launchers(tmp_path: Path, seeds: int) -> None:
    args = ["--experiment", "table3", "--seeds", str(seeds), "--run-dir", str(tmp_path / "t3")]
    via_submit = _submit(*args, "--dry-run")
    via_pipeline = _pipeline(*args, "--dry-run")
    assert via_submit.returncode == 0 == via_pipeline.returncode, via_pipeline.stderr
    plan = [line for line in via_submit.stdout.splitlines() if line.startswith("  ")]
    assert (
        plan
        == [line for line in via_pipeline.stdout.splitlines() if line.startswith("  ")][: len(plan)]
    )
    runs = [f"{s}-s{k}" for s in ("lora", "unfreeze") for k in range(1, seeds + 1)]
    trains = [line for line in plan if line.startswith("  train:")]
    assert [line.split(":")[1] for line in trains] == runs
    assert all("after prep" in line for line in trains)
    infers = [line for line in plan if line.startswith("  infer:")]
    arrays = [re.search(r"array of (\d+)", line).group(1) for line in infers]
    assert arrays == ["1"] * len(runs)  # one worker decodes every checkpoint of a run
    collect = next(line for line in plan if line.startswith("  collect:"))
    assert collect.endswith("after " + ",".join(f"infer:{r}" for r in runs))
    assert f"-> {tmp_path / 't3' / 'lora-s1'} (evaluates base," in via_submit.stdout
    evaluates = re.findall(r"\(evaluates ([^)]*)\)", via_submit.stdout)
    assert evaluates[1:] == ["epoch-1,epoch-2,epoch-3,epoch-4"] * (len(runs) - 1)  # base once
    assert "epochs=4 strategy=unfreeze seed=1" in via_submit.stdout
    assert "estimate train:lora-s1: " in via_submit.stdout
    sbatch = [line for line in via_pipeline.stdout.splitlines() if line.startswith("sbatch ")]
    assert len(sbatch) == 2 + 2 * len(runs)
    infer_ids = ":".join(str(103 + 2 * i) for i in range(len(runs)))  # dry-run ids from 101
    assert f"--dependency=afterok:{infer_ids}" in sbatch[-1]


def test_experiment_errors_name_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "exp.yaml"
    bad.write_text("config: paper_r64\nruns:\n  a: [lora.rank=4]\n")
    proc = _submit("--experiment", str(bad), "--dry-run")
    assert proc.returncode == 2
    assert re.search(r"experiment exp, run a: .*unknown key\(s\) lora\.rank", proc.stderr)
    bad.write_text("config: paper_r64\nrun: {}\n")
    proc = _submit("--experiment", str(bad), "--dry-run")
    assert proc.returncode == 2 and "unknown key(s) ['run']" in proc.stderr
    proc = _submit("--experiment", "table4", "--dry-run")
    assert proc.returncode == 2 and "no experiment named 'table4'" in proc.stderr


def test_the_dry_run_shows_and_checks_what_it_will_use(tiny_model: Path, tmp_path: Path) -> None:
    """Issue 25: snapshot, corpus, run dirs and image are printed, and a missing one is exit 2
    naming it, before anything is submitted."""
    proc = _pipeline("--experiment", "table3", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert f"snapshot: {tiny_model} (" in proc.stdout and "RANDOM WEIGHTS" in proc.stdout
    assert "corpus: " in proc.stdout and "runs under: " in proc.stdout
    missing = {
        "PRONLORA_MODEL": ("/nonexistent", "--model /nonexistent: no such directory"),
        "PRONLORA_DATA": ("/nonexistent2", "PRONLORA_DATA=/nonexistent2: no such corpus"),
        "PRONLORA_CONTAINER": ("/no/pronlora.sif", "PRONLORA_CONTAINER=/no/pronlora.sif: no such"),
    }
    for key, (value, message) in missing.items():
        proc = _pipeline("--experiment", "table3", "--dry-run", env={key: value})
        assert proc.returncode == 2 and message in proc.stderr, (key, proc.stderr)
        assert "Traceback" not in proc.stderr and "sbatch" not in proc.stdout
    # without prep, the prepared dir must be one prep wrote
    proc = _submit("--config", "smoke", "--no-prep", "--dry-run", "--executor", "sbatch")
    assert proc.returncode == 2 and "site-prepared/manifest.json: missing" in proc.stderr


def _fake_slurm(tmp_path: Path, accept: int) -> tuple[Path, Path]:
    """sbatch that accepts ``accept`` jobs (ids 1001, ...) then refuses; scancel; a call log."""
    fake = tmp_path / "bin"
    fake.mkdir()
    log = tmp_path / "calls"
    (fake / "sbatch").write_text(
        f'#!/bin/bash\necho "$*" >> {log}\nn=$(wc -l < {log})\n'
        f'[ "$n" -le {accept} ] && {{ echo $((1000 + n)); exit 0; }}\n'
        'echo "sbatch: error: Slurm controller not responding" >&2; exit 1\n'
    )
    (fake / "scancel").write_text(f'#!/bin/bash\necho "scancel $*" >> {log}\n')
    for f in fake.iterdir():
        f.chmod(0o755)
    return fake, log


def _login_node(tmp_path: Path, fake: Path) -> dict[str, str]:
    """A login node with sbatch and (the stand-in) apptainer only: no Python with pronlora."""
    image = tmp_path / "pronlora.sif"
    image.write_text("stand-in image")
    return {
        "PATH": f"{fake}:{REPO / 'tests' / 'standin'}:{os.environ['PATH']}",
        "PRONLORA_CONTAINER": str(image),
        "PRONLORA_PYTHON": "/nonexistent/python3",
        "STANDIN_PYTHON": sys.executable,
    }


def test_a_login_node_without_python_submits_the_plan_built_in_the_image(tmp_path: Path) -> None:
    fake, log = _fake_slurm(tmp_path, accept=99)
    env = _login_node(tmp_path, fake)
    run = tmp_path / "t3"
    args = ["--experiment", "table3", "--config", "smoke", "--run-dir", str(run)]
    proc = _pipeline(*args, env=env)
    assert proc.returncode == 0, proc.stderr
    ids = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "_job=" in line)
    assert list(ids) == [
        "prep_job", "train_lora_job", "infer_lora_job", "train_unfreeze_job",
        "infer_unfreeze_job", "collect_job",
    ]  # fmt: skip
    calls = log.read_text().splitlines()
    assert len(calls) == 6 and ids["prep_job"] == "1001"
    # dependencies carry the ids Slurm gave, and the jobs run the image through the templates
    assert "--dependency=afterok:1001" in calls[1] and calls[1].endswith("slurm/train.sbatch")
    assert "--dependency=afterok:1003:1005" in calls[5]
    assert "jobs run in: the image" in proc.stdout and (run / "lora" / "logs").is_dir()
    assert not list(REPO.glob(".submit-*.sh"))  # the script is removed
    dry = _pipeline(*args, "--dry-run", env=env)
    assert dry.returncode == 0 and "dry run: nothing submitted" in dry.stdout, dry.stderr


def test_a_refused_submission_from_the_image_leaves_nothing_queued(tmp_path: Path) -> None:
    fake, log = _fake_slurm(tmp_path, accept=2)
    run = tmp_path / "run"
    proc = _pipeline("--config", "smoke", "--run-dir", str(run), env=_login_node(tmp_path, fake))
    assert proc.returncode == 2 and "nothing is left queued" in proc.stderr, proc.stderr
    assert "sbatch refused the infer job (sbatch: error: Slurm controller" in proc.stderr
    assert "scancel 1001 1002" in log.read_text() and not run.exists()


def test_local_jobs_get_the_gpus_their_plan_asks_for(tmp_path: Path) -> None:
    from pronlora.launch.plan import build_plan
    from pronlora.launch.submitit_backend import InferTask, _executor

    for gres, want in (("gpu:1", 1), ("", 0)):
        settings = {**site_settings(REPO), "PRONLORA_GRES": gres}
        plan = build_plan("smoke", [], None, 1, str(tmp_path / "run"), settings)
        for job in plan.jobs:
            ex = _executor("local", plan, job)
            assert ex.parameters["gpus_per_node"] == (
                want if job.stage in ("train", "infer") else 0
            )
    task = InferTask(str(tmp_path / "run"), str(tmp_path), ["base"], 1, 1, 1, gpu=True)
    if not torch.cuda.is_available():
        with pytest.raises(EnvironmentProblem, match="asked for GPUs .* but sees none"):
            task(0)


def test_a_gpu_recipe_refuses_a_process_without_a_gpu(
    tiny_model: Path, demo_prepared: Path, tmp_path: Path
) -> None:
    if torch.cuda.is_available():
        pytest.skip("this process has a GPU")
    proc = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "train.py"), "--config", "paper_r64",
         "--prepared", str(demo_prepared), "--model", str(tiny_model),
         "--run-dir", str(tmp_path / "run")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "config paper_r64 computes in bf16 on a GPU" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run" / "run.json").exists()


def test_the_estimate_comes_from_the_measured_rates_file(
    tmp_path: Path, mini: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pronlora.launch import job_costs
    from pronlora.launch.plan import build_plan

    infer = {"fixed_s": 10, "s_per_instance": 0.25, "source": "I.md"}
    rates = {
        "train": {"smoke lora bf16": {"fixed_s": 60, "s_per_instance": 0.5, "source": "T.md"}},
        "infer": {"smoke lora bf16": infer},
    }
    monkeypatch.setattr(job_costs, "measured_rates", lambda: rates)
    settings = {**site_settings(REPO), "PRONLORA_DATA": str(mini)}
    plan = build_plan("smoke", ["epochs=2", "dtype=bf16"], None, 2, str(tmp_path / "r"), settings)
    assert plan.instances == {"train": 280, "test": 120}  # the mini corpus: 140 + 60 utterances
    est = plan.estimates()
    assert est["train"] == (60 + 2 * 280 * 0.5, "T.md")
    # base + 2 epochs, 2 shards: a task of one GPU per shard of 60 test instances, decoding
    # the three checkpoints; no next-checkpoint rate measured: each costs a first one's
    assert [k for k in est if k.startswith("infer")] == ["infer[0]", "infer[1]"]
    assert est["infer[0]"] == (3 * (10 + 60 * 0.25), "I.md")
    text = plan.describe()
    assert "estimate train: 5.7 min (T.md)" in text and "estimate infer: 2.5 min in 2 tasks" in text
    total = (60 + 280) / 3600
    assert f"estimate total: {total:.2f} GPU-h training + {150 / 3600:.2f} GPU-h" in text
    # the checkpoints a worker swaps in after its first cost the measured next-checkpoint rate
    infer |= {"next_fixed_s": 2, "next_s_per_instance": 0.2}
    est = plan.estimates()
    assert est["infer[1]"] == (10 + 60 * 0.25 + 2 * (2 + 60 * 0.2), "I.md")
    # 4 GPUs per task: the 6 items dealt to 4 workers (2, 2, 1, 1); the task lasts as its
    # slowest worker, and holds all 4 GPUs that long
    wide = build_plan(
        "smoke",
        ["epochs=2", "dtype=bf16", "micro_batch=1", "grad_accum=4"],
        None,
        2,
        str(tmp_path / "w"),
        settings,
        gpus_per_node=4,
    )
    assert wide.job("infer").array == 1
    assert wide.estimates()["infer[0]"] == (10 + 60 * 0.25 + 2 + 60 * 0.2, "I.md")
    nf4 = build_plan("smoke", ["quantization=nf4", "dtype=bf16"], None, 1, str(tmp_path), settings)
    assert "estimate train: no measured rate for smoke lora nf4" in nf4.describe()
    assert "estimate total: none" in nf4.describe()


def test_the_plan_counts_instances_in_the_corpus_or_the_prepared_dir(
    tmp_path: Path, demo_prepared: Path
) -> None:
    from pronlora.launch.job_costs import instance_counts

    manifest = json.loads((demo_prepared / "manifest.json").read_text())["counts"]
    want = {s: manifest[s]["APA"] + manifest[s]["MDD"] for s in ("train", "test")}
    settings = {"PRONLORA_PREPARED": str(demo_prepared)}
    assert instance_counts(settings, prep=False) == (want, f"the prepared dir {demo_prepared}")
    full = instance_counts({"PRONLORA_DATA": str(tmp_path / "none")}, prep=True)
    assert full == ({"train": 5000, "test": 5000}, "the full SpeechOcean762")


def test_every_measured_rate_names_its_results_file_and_command() -> None:
    from pronlora.launch.job_costs import measured_rates

    rates = measured_rates()
    assert rates["train"] and rates["infer"]
    for stage in ("train", "infer"):
        for combo, r in rates[stage].items():
            assert (REPO / r["source"]).is_file(), (combo, r["source"])
            # the stage's entry point; a decode may be jobs/infer.py's shard forced to real
            # answer lengths (a one-epoch model on random weights has none of its own)
            entries = [f"python3 jobs/{stage}.py"]
            if stage == "infer":
                entries.append("python3 bench/infer_real_lengths.py")
            assert r["command"].startswith(tuple(entries)), combo
            assert r["fixed_s"] > 0 and r["s_per_instance"] > 0


def test_a_plan_prints_each_runs_effective_overrides_and_no_gpu_estimate_without_gpus(
    tmp_path: Path,
) -> None:
    args = ["--experiment", "table3", "--config", "smoke", "--set", "epochs=2"]
    proc = _submit(*args, "--run-dir", str(tmp_path / "t3"), "--dry-run",
                   env={"PRONLORA_GRES": ""})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "run lora: smoke epochs=2 strategy=lora -> " in proc.stdout
    assert "epochs=4" not in proc.stdout
    assert "estimate: none: no job asks for a GPU here" in proc.stdout
    assert "GPU-h" not in proc.stdout
