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

from pronlora.core.atomic import follow_umask, read_jsonl, write_json
from pronlora.core.config import ConfigError, load_config
from pronlora.core.errors import DataError, SnapshotError
from pronlora.core.lock import LockedError, OutputLock
from pronlora.infer.shard_file import shard_paths
from pronlora.infer.stage import run_shard
from pronlora.train.recipe import EXIT_REQUEUE, train
from pronlora.train.stopping import STOP_SIGNALS

from .conftest import REPO, train_job


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
    for attempt in range(2):
        run = tmp_path / f"killed-{attempt}"
        in_save = attempt == 0
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
    assert mid_save == 1  # the first kill hit an unfinished save


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
    from pronlora.infer.shard_file import read_written

    path = tmp_path / "shard-0-of-1.jsonl"
    row = {"id": "a-APA", "utt_id": "a", "task": "APA", "output": "", "parsed": None}
    path.write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError, match=f"{path}:2: id a-APA written twice"):
        read_written(path)


def test_answers_with_unicode_line_separators_read_back_whole(tmp_path: Path) -> None:
    """Found on a GPU: random-weight answers hold U+2028/U+0085, which JSON leaves unescaped
    and str.splitlines() breaks at; a resumed shard must read such lines back as written."""
    from pronlora.core.atomic import jsonl_line
    from pronlora.infer.shard_file import read_written

    path = tmp_path / "shard-0-of-1.jsonl"
    rows = [
        {"id": f"u{i}-APA", "utt_id": f"u{i}", "task": "APA", "output": text, "parsed": None}
        for i, text in enumerate(["a\u2028b", "c\x85d\x1ce", "plain"])
    ]
    path.write_text("".join(jsonl_line(r) for r in rows), encoding="utf-8")
    assert list(read_written(path).values()) == rows


# --- 7. another split never collides with the test predictions ----------------------------


@pytest.mark.slow
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
    missing = tmp_path / "none"
    tag = "epochs=!!python/object/apply:os.system [id]"
    proc = train_job(missing, missing, tmp_path / "run", tag)
    assert proc.returncode == 2 and "not plain YAML" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


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


@pytest.mark.slow
def test_bad_prepared_dir_exits_2_naming_file_and_line(
    tiny_model: Path, demo_prepared: Path, tmp_path: Path
) -> None:
    import shutil

    prepared = tmp_path / "prepared"
    shutil.copytree(demo_prepared, prepared)
    rows = (prepared / "train.jsonl").read_text().splitlines()
    (prepared / "train.jsonl").write_text("\n".join([*rows[:3], rows[3][:40]]) + "\n")
    proc = train_job(prepared, tiny_model, tmp_path / "run", "max_steps=1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{prepared / 'train.jsonl'}:4: not valid JSON" in proc.stderr

    moved = tmp_path / "moved"
    shutil.copytree(demo_prepared, moved)
    lines = [json.loads(r) for r in rows]
    for row in lines:
        row["audio"] = str(tmp_path / "gone" / Path(row["audio"]).name)
    (moved / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    proc = train_job(moved, tiny_model, tmp_path / "run2", "max_steps=1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "corpus moved or deleted after prep? rerun jobs/prep.py" in proc.stderr
    assert not (tmp_path / "run2" / "run.json").exists()


# --- 13. the project's own lines are not buried -----------------------------------------------


@pytest.mark.slow
def test_stage_output_carries_no_third_party_advice(
    tiny_model: Path, demo_prepared: Path, tmp_path: Path
) -> None:
    proc = train_job(demo_prepared, tiny_model, tmp_path / "run", "max_steps=1")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout + proc.stderr
    for noise in ("pip install kernels", "rope_parameters", "Setting accelerator", "\r"):
        assert noise not in text, noise
    summary = next(line for line in text.splitlines() if "train_runtime" in line)
    assert "'tokens': 0" not in summary and "tokens_per_s" not in summary


def test_a_kill_inside_an_atomic_write_leaves_the_old_file_whole(tmp_path: Path) -> None:
    """A process killed (SIGKILL) while write_jsonl streams a large file: the target holds the old
    content, byte for byte; the kill lands mid-write (the temporary sibling is there, partial)."""
    target = tmp_path / "rows.jsonl"
    old = '{"old": 1}\n'
    target.write_text(old)
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\nfrom pronlora.core.atomic import write_jsonl\n"
         "def rows():\n    for i in range(10**7):\n"
         "        if i == 1000:\n            print('writing', flush=True)\n"
         "        if i > 1000:\n            time.sleep(0.001)\n        yield {'i': i}\n"
         f"write_jsonl({str(target)!r}, rows())\n"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert child.stdout is not None and child.stdout.readline() == "writing\n"
    partial = list(tmp_path.glob(".rows.jsonl.*.tmp"))
    assert len(partial) == 1  # the write is under way beside the target
    child.kill()
    assert child.wait() == -signal.SIGKILL
    assert target.read_text() == old
