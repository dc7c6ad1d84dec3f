"""Reliability on a shared cluster: kill -9, concurrent writers, locks, file modes, bad inputs."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pronlora.atomic import follow_umask, read_jsonl, write_json
from pronlora.config import ConfigError, load_config
from pronlora.errors import DataError, SnapshotError
from pronlora.infer import run_shard, shard_paths
from pronlora.lock import LockedError, OutputLock
from pronlora.stopping import STOP_SIGNALS
from pronlora.train import EXIT_REQUEUE, train

from .conftest import REPO


def _job(name: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(REPO / "jobs" / name), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _adapters_equal(a: Path, b: Path) -> bool:
    x, y = (load_file(str(p / "adapter_model.safetensors")) for p in (a, b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def _epochs(run: Path) -> list[str]:
    return json.loads((run / "checkpoints" / "done.json").read_text())["epochs"]


# --- 1. kill -9 during an epoch save -------------------------------------------------------


@pytest.mark.slow
def test_epoch_lost_to_a_kill_during_its_save_is_rebuilt(
    tiny_model: Path, demo_prepared: Path, tmp_path: Path
) -> None:
    """Deterministic form: the state a kill leaves after the step checkpoint at an epoch end."""
    cfg = load_config("smoke", ["grad_accum=8"])  # one optimizer step per epoch, saved each step
    straight = tmp_path / "straight"
    assert train(cfg, demo_prepared, tiny_model, straight) == 0
    run = tmp_path / "run"
    run.mkdir()
    (run / "stop").touch()
    assert train(cfg, demo_prepared, tiny_model, run, stop_file=run / "stop") == EXIT_REQUEUE
    (run / "stop").unlink()
    epoch1 = run / "checkpoints" / "epoch-1"
    epoch1.rename(run / "checkpoints" / "epoch-1.partial")  # the save never finished
    (run / "checkpoints" / "epoch-1.partial" / "meta.json").unlink()
    assert train(cfg, demo_prepared, tiny_model, run) == 0
    assert _epochs(run) == ["epoch-1", "epoch-2"]
    assert not (run / "checkpoints" / "epoch-1.partial").exists()
    for e in ("epoch-1", "epoch-2"):
        assert _adapters_equal(straight / "checkpoints" / e, run / "checkpoints" / e), e
    meta = json.loads((epoch1 / "meta.json").read_text())
    assert meta == json.loads((straight / "checkpoints" / "epoch-1" / "meta.json").read_text())


@pytest.mark.slow
def test_kill_9_at_random_points_of_epoch_saves_loses_nothing(
    tiny_model: Path, demo_prepared: Path, tmp_path: Path
) -> None:
    """SIGKILL lands inside the save of epoch 2 (asserted: the process died by the signal with
    the save unfinished), or at a random training step; the rerun ends with the adapters of an
    uninterrupted run."""
    cfg_args = ["save_steps=1"]
    straight = tmp_path / "straight"
    assert train(load_config("smoke", cfg_args), demo_prepared, tiny_model, straight) == 0
    rng = random.Random(0)
    args = ["--config", "smoke", "--prepared", str(demo_prepared), "--model", str(tiny_model)]
    mid_save = 0
    for attempt in range(3):
        run = tmp_path / f"killed-{attempt}"
        in_save = attempt < 2
        proc = _job("train.py", *args, "--run-dir", str(run), *cfg_args)
        # inside epoch 2's save, or once the first step checkpoint exists (a random step)
        mark = run / "checkpoints" / "epoch-2.partial" if in_save else run / "trainer"
        deadline = time.monotonic() + 300
        while not mark.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(rng.uniform(0, 0.002) if in_save else rng.uniform(0, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        assert proc.returncode == -signal.SIGKILL, (attempt, proc.returncode)
        mid_save += in_save and (run / "checkpoints" / "epoch-2.partial").exists()
        assert train(load_config("smoke", cfg_args), demo_prepared, tiny_model, run) == 0
        assert _epochs(run) == ["epoch-1", "epoch-2"], attempt
        for e in ("epoch-1", "epoch-2"):
            assert _adapters_equal(straight / "checkpoints" / e, run / "checkpoints" / e)
    assert mid_save >= 1  # at least one kill hit an unfinished save


# --- 2. two inference processes on one shard ----------------------------------------------


@pytest.mark.slow
def test_two_workers_on_one_shard_never_write_twice(
    trained_run: Path, demo_prepared: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"  # a fresh predictions folder over the trained run's checkpoints
    run.mkdir()
    for name in ("run.json", "config.yaml"):
        (run / name).write_bytes((trained_run / name).read_bytes())
    (run / "checkpoints").symlink_to(trained_run / "checkpoints")
    args = ["--run-dir", str(run), "--checkpoint", "epoch-1"]
    args += ["--prepared", str(demo_prepared), "--shard", "0"]
    first, second = _job("infer.py", *args), _job("infer.py", *args)
    results = [p.communicate(timeout=600) for p in (first, second)]
    codes = sorted(p.returncode for p in (first, second))
    assert codes == [0, 2], results
    pairs = zip((first, second), results, strict=True)
    refused = next(err for p, (_, err) in pairs if p.returncode == 2)
    assert "is in use by host" in refused and "delete" in refused
    out, done = shard_paths(run, "epoch-1", 0, 1)
    ids = [r["id"] for r in read_jsonl(out)]
    assert len(ids) == len(set(ids)) == len(read_jsonl(demo_prepared / "test.jsonl"))
    assert json.loads(done.read_text())["instances"] == len(ids)


def test_a_prediction_file_with_an_id_twice_is_refused(trained_run: Path, tmp_path: Path) -> None:
    from pronlora.errors import DataError
    from pronlora.infer import read_written

    path = tmp_path / "shard-0-of-1.jsonl"
    row = {"id": "a-APA", "utt_id": "a", "task": "APA", "output": "", "parsed": None}
    path.write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError, match=f"{path}:2: id a-APA written twice"):
        read_written(path)


def test_answers_with_unicode_line_separators_read_back_whole(tmp_path: Path) -> None:
    """Found on a GPU: random-weight answers hold U+2028/U+0085, which JSON leaves unescaped
    and str.splitlines() breaks at; a resumed shard must read such lines back as written."""
    from pronlora.atomic import jsonl_line
    from pronlora.infer import read_written

    path = tmp_path / "shard-0-of-1.jsonl"
    rows = [
        {"id": f"u{i}-APA", "utt_id": f"u{i}", "task": "APA", "output": text, "parsed": None}
        for i, text in enumerate(["a\u2028b", "c\x85d\x1ce", "plain"])
    ]
    path.write_text("".join(jsonl_line(r) for r in rows), encoding="utf-8")
    assert list(read_written(path).values()) == rows


# --- 7. another split never collides with the test predictions ----------------------------


def test_train_split_predictions_do_not_touch_test_ones(
    trained_run: Path, demo_prepared: Path
) -> None:
    run_shard(trained_run, "epoch-1", demo_prepared, "test", 0, 1)
    test_out, _ = shard_paths(trained_run, "epoch-1", 0, 1)
    before = test_out.read_bytes()
    run_shard(trained_run, "epoch-1", demo_prepared, "train", 0, 1)
    train_out, _ = shard_paths(trained_run, "epoch-1", 0, 1, "train")
    assert train_out.parent == trained_run / "predictions-train" / "epoch-1"
    assert test_out.read_bytes() == before
    train_ids = {r["id"] for r in read_jsonl(demo_prepared / "train.jsonl")}
    assert {r["id"] for r in read_jsonl(train_out)} == train_ids


# --- 8. files follow the umask ---------------------------------------------------------------


def _modes(root: Path) -> dict[str, int]:
    return {
        str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode)
        for p in [root, *root.rglob("*")]
        if not p.is_symlink()
    }


def test_outputs_follow_the_umask(trained_run: Path, demo_prepared: Path, tmp_path: Path) -> None:
    old = os.umask(0o002)
    try:
        write_json(tmp_path / "x.json", {})
        assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == 0o664
    finally:
        os.umask(old)
    old = os.umask(0o022)
    try:
        for root in (trained_run / "checkpoints", trained_run / "trainer", demo_prepared):
            bad = {k: oct(m) for k, m in _modes(root).items() if m & 0o044 != 0o044}
            assert not bad, (root, bad)
        # a library that writes private files (safetensors: 0600) is corrected afterwards
        from safetensors.torch import save_file

        save_file({"a": torch.zeros(1)}, str(tmp_path / "w.safetensors"))
        follow_umask(tmp_path)
        assert stat.S_IMODE((tmp_path / "w.safetensors").stat().st_mode) == 0o644
    finally:
        os.umask(old)


# --- 9. nothing written before the inputs are checked ---------------------------------------


def test_bad_model_writes_nothing_so_the_fix_is_accepted(
    tiny_model: Path, demo_prepared: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    with pytest.raises(SnapshotError):
        train(load_config("smoke", ["max_steps=1"]), demo_prepared, tmp_path / "nope", run)
    assert not (run / "run.json").exists()
    handlers = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    assert train(load_config("smoke", ["max_steps=1"]), demo_prepared, tiny_model, run) == 0
    # train() as a library call leaves the caller's signal handlers alone (entry points own them)
    assert {s: signal.getsignal(s) for s in STOP_SIGNALS} == handlers


# --- 10. one writer per run dir ---------------------------------------------------------------


def test_live_lock_is_refused_naming_the_holder(
    tiny_model: Path, demo_prepared: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    holder = {"host": socket.gethostname(), "pid": os.getppid(), "slurm_job": "77"}
    (run / ".lock").write_text(json.dumps({**holder, "started": "then"}))
    with pytest.raises(LockedError, match=rf"pid {os.getppid()}, Slurm job 77.*squeue -j 77"):
        train(load_config("smoke", ["max_steps=1"]), demo_prepared, tiny_model, run)
    assert not (run / "run.json").exists()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = tmp_path / ".lock"
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid}))
    with OutputLock(lock, "run dir x"):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()


def test_lock_of_another_host_needs_a_human(tmp_path: Path) -> None:
    lock = tmp_path / ".lock"
    lock.write_text(json.dumps({"host": "node-elsewhere", "pid": 1234}))
    with pytest.raises(LockedError, match=rf"ps -p 1234.*on node-elsewhere.*delete {lock}"):
        OutputLock(lock, "run dir x").acquire()


def test_requeued_slurm_job_takes_over_its_own_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = tmp_path / ".lock"
    old = {"host": "node-a", "pid": 99, "slurm_job": "41", "slurm_restart": "0"}
    lock.write_text(json.dumps(old))
    monkeypatch.setenv("SLURM_JOB_ID", "41")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    with OutputLock(lock, "run dir x"):
        assert json.loads(lock.read_text())["slurm_restart"] == "1"


# --- 6 and 11: bad values are named --------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("lr=.inf", "lr: must be a finite number, got inf"),
        ("lr=.nan", "lr: must be a finite number"),
        ("epochs.x=3", "override 'epochs.x=3': epochs is not a mapping"),
        ("epochs=[1", r"override 'epochs=\[1': the value is not plain YAML"),
        ("epochs=!!python/object/apply:os.system [id]", "the value is not plain YAML"),
        ("seed=-1", "seed: must be in 0..2"),
        ("weight_decay=-5", "weight_decay: must be >= 0, got -5.0"),
        ("name=../../../x", "name: '../../../x' names the run dir"),
        ("name=a/b", "name: 'a/b' names the run dir"),
        ("lr=1e-4x", "lr: expected float, got '1e-4x'"),
    ],
)
def test_bad_overrides_are_named(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config("smoke", [override])


@pytest.mark.parametrize(("text", "value"), [("1e-4", 1e-4), ("2E-5", 2e-5), ("3e2", 300.0)])
def test_numbers_read_as_python_reads_them(text: str, value: float, tmp_path: Path) -> None:
    """YAML 1.1 reads 1e-4 as a string; a learning rate is written that way, in an override
    and in a config file."""
    assert load_config("smoke", [f"lr={text}"]).lr == value
    own = tmp_path / "own.yaml"
    own.write_text(f"lr: {text}\nepochs: 1\n")
    assert load_config(str(own)).lr == value


def test_a_yaml_tag_in_a_train_override_exits_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "jobs" / "train.py"),
            "--config",
            "smoke",
            "--prepared",
            str(tmp_path / "none"),
            "--model",
            str(tmp_path / "none"),
            "--run-dir",
            str(tmp_path / "run"),
            "epochs=!!python/object/apply:os.system [id]",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "not plain YAML" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


# --- issue 26: no write outside the run dir, through a link or a path -----------------------


def _infer(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "jobs" / "infer.py"), *args], capture_output=True, text=True
    )


def _copy_run(trained_run: Path, dest: Path) -> Path:
    import shutil

    dest.mkdir(parents=True)
    shutil.copy2(trained_run / "run.json", dest / "run.json")
    shutil.copytree(trained_run / "checkpoints", dest / "checkpoints")
    return dest


@pytest.mark.slow
def test_links_planted_in_a_run_dir_are_refused_naming_them(
    trained_run: Path, demo_prepared: Path, tmp_path: Path
) -> None:
    run = _copy_run(trained_run, tmp_path / "run")
    victim = tmp_path / "elsewhere.txt"
    victim.write_text("a lab member's file\n")
    common = ["--run-dir", str(run), "--prepared", str(demo_prepared)]
    # a link at the shard file
    shard = run / "predictions" / "epoch-1" / "shard-0-of-1.jsonl"
    shard.parent.mkdir(parents=True)
    shard.symlink_to(victim)
    proc = _infer(*common, "--checkpoint", "epoch-1")
    assert proc.returncode == 2 and f"{shard}: a symbolic link inside" in proc.stderr
    assert victim.read_text() == "a lab member's file\n" and "Traceback" not in proc.stderr
    # a link at the checkpoint's folder
    shard.unlink()
    shard.parent.rmdir()
    (tmp_path / "outside").mkdir()
    shard.parent.symlink_to(tmp_path / "outside")
    proc = _infer(*common, "--checkpoint", "epoch-1")
    assert proc.returncode == 2 and f"{shard.parent}: a symbolic link inside" in proc.stderr
    assert list((tmp_path / "outside").iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("name", ["/abs/epoch-1", "../../x", "epoch-1/../../x", "best"])
def test_a_checkpoint_is_a_name_of_the_run_not_a_path(
    trained_run: Path, demo_prepared: Path, tmp_path: Path, name: str
) -> None:
    run = _copy_run(trained_run, tmp_path / "run")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    proc = _infer("--run-dir", str(run), "--prepared", str(demo_prepared), "--checkpoint", name)
    assert proc.returncode == 2 and "expected base or epoch-N" in proc.stderr, proc.stderr
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


@pytest.mark.slow
def test_a_missing_epoch_leaves_no_trace(trained_run: Path, demo_prepared: Path, tmp_path: Path):
    """A failed --checkpoint epoch-9 must not leave a predictions/epoch-9/ for collect to find."""
    run = _copy_run(trained_run, tmp_path / "run")
    proc = _infer(
        "--run-dir", str(run), "--prepared", str(demo_prepared), "--checkpoint", "epoch-9"
    )
    assert proc.returncode == 2 and "epoch-9" in proc.stderr
    assert not (run / "predictions").exists()


@pytest.mark.slow
def test_a_truncated_run_json_is_named(
    trained_run: Path, demo_prepared: Path, tmp_path: Path
) -> None:
    run = _copy_run(trained_run, tmp_path / "run")
    text = (run / "run.json").read_text()
    (run / "run.json").write_text(text[: len(text) // 2])
    proc = _infer("--run-dir", str(run), "--prepared", str(demo_prepared), "--checkpoint", "base")
    assert proc.returncode == 2 and f"{run / 'run.json'}: not valid JSON" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_collect_out_naming_a_file_exits_2(demo_prepared: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.md"
    out.write_text("notes\n")
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "jobs" / "collect.py"),
            "--prepared",
            str(demo_prepared),
            "--runs",
            str(tmp_path),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and f"--out {out}: an existing file" in proc.stderr
    assert out.read_text() == "notes\n"


# --- 3, 4, 5, 11: bad corpus inputs exit 2 naming the file ----------------------------------


def _prep(corpus: Path, out: Path) -> subprocess.CompletedProcess:
    args = ["--source", "kaldi", "--data", str(corpus), "--out", str(out)]
    return subprocess.run(
        [sys.executable, str(REPO / "jobs" / "prep.py"), *args],
        capture_output=True,
        text=True,
    )


def _first_wav(corpus: Path) -> Path:
    rel = (corpus / "train" / "wav.scp").read_text().splitlines()[0].split()[1]
    return corpus / rel


def _truncated_wav(corpus: Path) -> str:
    wav = _first_wav(corpus)
    data = wav.read_bytes()
    wav.write_bytes(data[: len(data) // 2])
    return rf"{wav}\]: truncated WAV: its header declares \d+ bytes"


def _duplicate_key(corpus: Path) -> str:
    scp = corpus / "train" / "wav.scp"
    lines = scp.read_text().splitlines()
    key = lines[0].split()[0]
    other = lines[1].split()[1]
    scp.write_text("\n".join([*lines, f"{key} {other}"]) + "\n")
    return rf"{scp}:{len(lines) + 1}: key {key} already given on line 1"


def _empty_split(corpus: Path) -> str:
    for name in ("wav.scp", "text", "utt2spk"):
        (corpus / "test" / name).write_text("")
    return rf"{corpus / 'test' / 'wav.scp'}: empty; the test split has no audio"


def _latin1_text(corpus: Path) -> str:
    text = corpus / "train" / "text"
    lines = text.read_bytes().splitlines()
    lines[1] = lines[1] + b" CAF\xe9"
    text.write_bytes(b"\n".join(lines) + b"\n")
    return rf"{text}:2: not UTF-8 \(byte 0xe9"


def _scores_list(corpus: Path) -> str:
    scores = corpus / "resource" / "scores.json"
    scores.write_text(json.dumps(list(json.loads(scores.read_text()).values())))
    return rf"{scores}: expected an object keyed by utterance id at the top level, got a list"


def _word_is_a_string(corpus: Path) -> str:
    scores = corpus / "resource" / "scores.json"
    data = json.loads(scores.read_text())
    utt = next(iter(data))
    data[utt]["words"][0] = "WE"
    scores.write_text(json.dumps(data))
    return rf"{utt} \[{scores}\]: word 0 is a str \('WE'\), not an object"


@pytest.mark.parametrize(
    "damage",
    [_truncated_wav, _duplicate_key, _empty_split, _latin1_text, _scores_list, _word_is_a_string],
)
def test_bad_corpus_exits_2_naming_the_file(small_corpus: Path, tmp_path: Path, damage) -> None:
    import re

    pattern = damage(small_corpus)
    proc = _prep(small_corpus, tmp_path / "out")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert re.search(pattern, proc.stderr), proc.stderr
    assert not (tmp_path / "out" / "train.jsonl").exists()


def _train_job(prepared: Path, model: Path, run: Path, *extra: str) -> subprocess.CompletedProcess:
    args = ["--prepared", str(prepared), "--model", str(model), "--run-dir", str(run), *extra]
    return subprocess.run(
        [sys.executable, str(REPO / "jobs" / "train.py"), "--config", "smoke", *args],
        capture_output=True,
        text=True,
    )


def test_bad_prepared_dir_exits_2_naming_file_and_line(
    tiny_model: Path, demo_prepared: Path, tmp_path: Path
) -> None:
    import shutil

    prepared = tmp_path / "prepared"
    shutil.copytree(demo_prepared, prepared)
    rows = (prepared / "train.jsonl").read_text().splitlines()
    (prepared / "train.jsonl").write_text("\n".join([*rows[:3], rows[3][:40]]) + "\n")
    proc = _train_job(prepared, tiny_model, tmp_path / "run", "max_steps=1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{prepared / 'train.jsonl'}:4: not valid JSON" in proc.stderr

    moved = tmp_path / "moved"
    shutil.copytree(demo_prepared, moved)
    lines = [json.loads(r) for r in rows]
    for row in lines:
        row["audio"] = str(tmp_path / "gone" / Path(row["audio"]).name)
    (moved / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    proc = _train_job(moved, tiny_model, tmp_path / "run2", "max_steps=1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "corpus moved or deleted after prep? rerun jobs/prep.py" in proc.stderr
    assert not (tmp_path / "run2" / "run.json").exists()


# --- 13. the project's own lines are not buried -----------------------------------------------


@pytest.mark.slow
def test_stage_output_carries_no_third_party_advice(
    tiny_model: Path, demo_prepared: Path, tmp_path: Path
) -> None:
    proc = _train_job(demo_prepared, tiny_model, tmp_path / "run", "max_steps=1")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout + proc.stderr
    for noise in ("pip install kernels", "rope_parameters", "Setting accelerator", "\r"):
        assert noise not in text, noise
    summary = next(line for line in text.splitlines() if "train_runtime" in line)
    assert "'tokens': 0" not in summary and "tokens_per_s" not in summary


# --- issue 26: each stage checks that what it reads is what the last one wrote --------------


def _other_prepared(demo_prepared: Path, dest: Path) -> Path:
    """A copy of the prepared dir with the same ids and one test score changed, recorded by a
    manifest of its own (another prep of other data)."""
    import shutil

    from pronlora.atomic import write_jsonl
    from pronlora.layout import PreparedDir

    shutil.copytree(demo_prepared, dest)
    rows = read_jsonl(dest / "test.jsonl")
    apa = next(r for r in rows if r["task"] == "APA")
    apa["scores"]["accuracy"] = 10 - apa["scores"]["accuracy"]
    write_jsonl(dest / "test.jsonl", rows)
    manifest = json.loads((dest / "manifest.json").read_text())
    write_json(dest / "manifest.json", {**manifest, **PreparedDir(dest).content_record()})
    return dest


@pytest.mark.slow
def test_prepared_files_edited_after_prep_are_refused_by_every_stage(
    trained_run: Path, tiny_model: Path, demo_prepared: Path, tmp_path: Path
) -> None:
    import shutil

    edited = tmp_path / "edited"
    shutil.copytree(demo_prepared, edited)
    assert _infer_ok_or(trained_run, edited, tmp_path, "epoch-1") == 0  # a copy is the same data
    os.utime(edited / "test.jsonl")  # touched, content unchanged: hashed again, accepted
    assert _infer_ok_or(trained_run, edited, tmp_path / "t", "epoch-1") == 0
    with open(edited / "test.jsonl", "a") as fh:
        fh.write(" \n")  # one byte more: not what prep wrote
    message = f"--prepared {edited}: train.jsonl and test.jsonl are not what prep wrote"
    proc = _train_job(edited, tiny_model, tmp_path / "run", "max_steps=1")
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "run" / "run.json").exists()
    proc = _infer(
        "--run-dir", str(_copy_run(trained_run, tmp_path / "r2")), "--prepared", str(edited),
        "--checkpoint", "epoch-1",
    )  # fmt: skip
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    collect = [sys.executable, str(REPO / "jobs" / "collect.py"), "--prepared", str(edited)]
    proc = subprocess.run(
        [*collect, "--runs", str(trained_run), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and message in proc.stderr
    (edited / "manifest.json").write_text(json.dumps({"format": 1}))  # a prep stopped early
    proc = _train_job(edited, tiny_model, tmp_path / "run", "max_steps=1")
    assert proc.returncode == 2 and "no content_hash (prep did not finish?)" in proc.stderr


def _infer_ok_or(run: Path, prepared: Path, tmp: Path, checkpoint: str, *extra: str) -> int:
    proc = _infer(
        "--run-dir", str(_copy_run(run, tmp / "copy")), "--prepared", str(prepared),
        "--checkpoint", checkpoint, *extra,
    )  # fmt: skip
    assert proc.returncode in (0, 2), proc.stderr
    return proc.returncode


@pytest.mark.slow
def test_inference_and_collect_use_the_data_the_run_was_trained_on(
    trained_run: Path, demo_prepared: Path, tmp_path: Path
) -> None:
    other = _other_prepared(demo_prepared, tmp_path / "other")
    run = _copy_run(trained_run, tmp_path / "run")
    args = ["--run-dir", str(run), "--checkpoint", "epoch-1"]
    proc = _infer(*args, "--prepared", str(other))
    assert proc.returncode == 2 and "trained on data of hash" in proc.stderr
    assert "--other-data" in proc.stderr and not (run / "predictions").exists()
    proc = _infer(*args, "--prepared", str(other), "--other-data")
    assert proc.returncode == 0 and "not the data" in proc.stderr, proc.stderr
    # predictions of the other data, collected against the data the run was trained on
    collect_args = [sys.executable, str(REPO / "jobs" / "collect.py"), "--runs", str(run)]
    proc = subprocess.run(
        [*collect_args, "--prepared", str(demo_prepared), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "shard-0-of-1.done.json: decoded from prepared" in proc.stderr
    proc = subprocess.run(
        [*collect_args, "--prepared", str(other), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr


# --- issue 26: storage and permissions are named, not tracebacks ----------------------------


@pytest.mark.slow
def test_a_tampered_step_checkpoint_is_named_as_untrusted(
    tiny_model: Path, demo_prepared: Path, tmp_path: Path
) -> None:
    import pickle

    cfg = load_config("smoke", ["grad_accum=8"])  # a step checkpoint at each step
    run = tmp_path / "run"
    run.mkdir()
    (run / "stop").touch()
    assert train(cfg, demo_prepared, tiny_model, run, stop_file=run / "stop") == EXIT_REQUEUE
    (run / "stop").unlink()
    [step] = sorted((run / "trainer").glob("checkpoint-*"))
    rng = step / "rng_state.pth"
    assert rng.is_file()
    rng.write_bytes(pickle.dumps(os.getcwd.__self__.system))  # a callable, not tensors
    with pytest.raises(
        DataError, match=f"{step}: a file of this step checkpoint cannot be trusted"
    ):
        train(cfg, demo_prepared, tiny_model, run)


def test_a_lock_that_cannot_be_written_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    real_open = os.open

    def read_only_fs(path, flags, *args):
        if str(path).endswith(".lock"):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only_fs)
    lock = tmp_path / "predictions" / "epoch-1" / "shard-0-of-1.lock"
    with pytest.raises(DataError, match=r"epoch-1: cannot write the lock of shard x there \(Read"):
        OutputLock(lock, "shard x").acquire()


def test_a_full_disk_is_one_line_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import errno

    from pronlora.atomic import write_text
    from pronlora.cli import run_job

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    target = tmp_path / "out" / "report.md"
    with pytest.raises(SystemExit) as stopped:
        run_job(lambda: write_text(target, "x" * 100))
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert f"error: no space left writing {target}; " in err and "GiB free" in err
    assert "rerun the same command to resume" in err and "Traceback" not in err
    assert list((tmp_path / "out").iterdir()) == []  # no temporary file left behind
    with pytest.raises(OSError, match="I/O error"):  # other OS errors stay bugs: a traceback
        run_job(lambda: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))


@pytest.mark.slow
def test_every_output_of_a_smoke_pipeline_lies_where_it_was_given(
    tiny_model: Path, tmp_path: Path
) -> None:
    """Issue 26: prep, train, infer and collect through their entry points; every file they
    write lies under the prepared dir, run dir, report dir or model cache they were given, and
    none is a symbolic link."""
    from pronlora.devtools.synthetic_corpus import make_demo_corpus

    corpus = make_demo_corpus(tmp_path / "corpus", utterances=8, seed=3)
    given = {n: tmp_path / n for n in ("prepared", "runs", "report", "cache", "home", "tmp")}
    given["home"].mkdir()
    given["tmp"].mkdir()
    env = {
        **os.environ,
        "PRONLORA_CACHE": str(given["cache"]),
        "HOME": str(given["home"]),
        "TMPDIR": str(given["tmp"]),
        "MPLCONFIGDIR": str(given["home"] / "mpl"),  # matplotlib's font cache, not ours
    }
    before = {p for p in tmp_path.rglob("*")}
    run = given["runs"] / "smoke"
    steps = [
        ["prep.py", "--source", "kaldi", "--data", str(corpus), "--out", str(given["prepared"])],
        ["train.py", "--config", "smoke", "--prepared", str(given["prepared"]), "--model",
         str(tiny_model), "--run-dir", str(run), "epochs=1"],
        ["infer.py", "--run-dir", str(run), "--prepared", str(given["prepared"]),
         "--checkpoint", "base,epoch-1", "--num-shards", "2"],
        ["collect.py", "--prepared", str(given["prepared"]), "--runs", str(run), "--out",
         str(given["report"])],
    ]  # fmt: skip
    for step in steps:
        proc = subprocess.run(
            [sys.executable, str(REPO / "jobs" / step[0]), *step[1:]],
            capture_output=True,
            text=True,
            env=env,
        )
        assert proc.returncode == 0, (step[0], proc.stderr[-2000:])
    written = sorted(p for p in tmp_path.rglob("*") if p not in before)
    ours = ("prepared", "runs", "report", "cache")
    stray = [
        p
        for p in written
        if p.relative_to(tmp_path).parts[0] not in ours
        and not p.is_relative_to(given["home"] / "mpl")
    ]
    assert stray == [], stray
    assert [p for p in written if p.is_symlink()] == []
    assert (run / "predictions" / "epoch-1").is_dir() and (given["report"] / "report.md").is_file()
    for p in written:
        assert ".." not in p.relative_to(tmp_path).parts


@pytest.mark.slow
def test_a_run_refused_for_a_long_instance_accepts_the_corrected_command(
    tiny_model: Path, demo_prepared: Path, tmp_path: Path
) -> None:
    """max_length only refuses (nothing is cut), so the rerun with a larger one is the same
    setup, not "a different setup"."""
    from pronlora.collate import SequenceTooLongError

    run = tmp_path / "run"
    with pytest.raises(SequenceTooLongError, match="longer than max_length=16"):
        train(
            load_config("smoke", ["max_length=16", "max_steps=1"]), demo_prepared, tiny_model, run
        )
    assert (run / "run.json").is_file()  # the check runs in the first pass
    assert train(load_config("smoke", ["max_steps=1"]), demo_prepared, tiny_model, run) == 0
    with pytest.raises(ConfigError, match="different setup"):  # a real difference still is one
        train(load_config("smoke", ["max_steps=1", "lr=0.5"]), demo_prepared, tiny_model, run)
