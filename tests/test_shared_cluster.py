"""Shared-cluster safety and integrity (issue 26): no write outside the dirs a job was given,
prepared data proven unchanged, named errors for storage and permissions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pronlora.core.atomic import read_jsonl, write_json
from pronlora.core.config import ConfigError, load_config
from pronlora.core.errors import DataError
from pronlora.core.lock import OutputLock
from pronlora.train.recipe import EXIT_REQUEUE, train

from .conftest import REPO, train_job

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
@pytest.mark.parametrize("where", ["train_log.jsonl", "trainer", "checkpoints/epoch-1"])
def test_a_training_job_never_writes_through_a_planted_link(
    where: str, tiny_model: Path, demo_prepared: Path, tmp_path: Path
) -> None:
    """Planted before the job (refused before anything is written) or while it runs (refused
    at its next write there): the link's target stays untouched."""
    import shutil

    from transformers import TrainerCallback

    outside, run = tmp_path / "outside", tmp_path / "run"
    outside.mkdir()
    run.mkdir()
    link = run / where
    planted = f"{link}: a symbolic link inside {run}"
    if "/" not in where:
        link.symlink_to(outside)
        proc = train_job(demo_prepared, tiny_model, run, "max_steps=2")
        assert proc.returncode == 2 and planted in proc.stderr, proc.stderr[-2000:]
        assert list(outside.iterdir()) == [] and not (run / "run.json").exists()
        link.unlink()

    class PlantAfterStep1(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 1:
                if link.is_dir():
                    shutil.rmtree(link)
                link.unlink(missing_ok=True)
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(outside)

    with pytest.raises(DataError, match=f"{link}: a symbolic link"):
        train(load_config("smoke"), demo_prepared, tiny_model, run, callbacks=[PlantAfterStep1()])
    assert list(outside.iterdir()) == []


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


# --- issue 26: each stage checks that what it reads is what the last one wrote --------------


def _other_prepared(demo_prepared: Path, dest: Path) -> Path:
    """A copy of the prepared dir with the same ids and one test score changed, recorded by a
    manifest of its own (another prep of other data)."""
    import shutil

    from pronlora.core.atomic import write_jsonl
    from pronlora.core.layout import PreparedDir

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

    from pronlora.core.layout import PreparedDir

    edited = tmp_path / "edited"
    shutil.copytree(demo_prepared, edited)
    original = PreparedDir(demo_prepared).verified_hash()
    assert PreparedDir(edited).verified_hash() == original  # a copy is the same data
    os.utime(edited / "test.jsonl", ns=(1, 1))  # touched, content unchanged: hashed again
    assert PreparedDir(edited).verified_hash() == original
    with open(edited / "test.jsonl", "a") as fh:
        fh.write(" \n")  # one byte more: not what prep wrote
    message = f"--prepared {edited}: train.jsonl and test.jsonl are not what prep wrote"
    proc = train_job(edited, tiny_model, tmp_path / "run", "max_steps=1")
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
    proc = train_job(edited, tiny_model, tmp_path / "run", "max_steps=1")
    assert proc.returncode == 2 and "no content_hash (prep did not finish?)" in proc.stderr


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
    assert proc.returncode == 0 and proc.stderr.count("not the data") == 1, proc.stderr
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

    from pronlora.core.atomic import write_text
    from pronlora.core.cli import run_job

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
    from pronlora.model.collate import SequenceTooLongError

    run = tmp_path / "run"
    with pytest.raises(SequenceTooLongError, match="longer than max_length=16"):
        train(
            load_config("smoke", ["max_length=16", "max_steps=1"]), demo_prepared, tiny_model, run
        )
    assert (run / "run.json").is_file()  # the check runs in the first pass
    assert train(load_config("smoke", ["max_steps=1"]), demo_prepared, tiny_model, run) == 0
    with pytest.raises(ConfigError, match="different setup"):  # a real difference still is one
        train(load_config("smoke", ["max_steps=1", "lr=0.5"]), demo_prepared, tiny_model, run)


@pytest.mark.slow
def test_a_resumed_run_refuses_changed_prepared_data(
    tiny_model: Path, demo_prepared: Path, tmp_path: Path
) -> None:
    """Prep rerun into the same dir on changed data (a manifest of its own): a resume of a run
    trained on the old data is a different setup."""
    import shutil

    from pronlora.core.atomic import write_jsonl
    from pronlora.core.layout import PreparedDir

    prepared = tmp_path / "prepared"
    shutil.copytree(demo_prepared, prepared)
    run = tmp_path / "run"
    cfg = load_config("smoke", ["max_steps=1"])
    assert train(cfg, prepared, tiny_model, run) == 0
    rows = read_jsonl(prepared / "train.jsonl")
    rows[0]["target"] += " "
    write_jsonl(prepared / "train.jsonl", rows)
    manifest = json.loads((prepared / "manifest.json").read_text())
    write_json(prepared / "manifest.json", {**manifest, **PreparedDir(prepared).content_record()})
    with pytest.raises(ConfigError, match=r"different setup \(the prepared data"):
        train(cfg, prepared, tiny_model, run)
