"""Shared fixtures: the real mini corpus from ../shared, subsets of it, its HF form."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# One OpenMP thread per process, set before torch loads here and inherited by every job process
# and Slurm job a test starts: three pytest workers and their jobs share two cores, and a tiny
# model's tensors gain nothing from intra-op threads that spin while they wait. The full suite
# took 23:27 with torch's default (a thread per core) and 16:53 with one (2 cores,
# bench/results/cpu-2026-12-07-suite-threads.md).
# A value already set is kept.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Files whose tests mostly wait (Slurm's queue, time limits, requeues): dealt to a worker
# first, so their waits overlap the other files' CPU work instead of ending the run alone.
# xdist otherwise deals the files with the most tests first, and test_slurm.py (5 tests,
# 8 min) started 13 min into a 21:40 run and ran its last 3.6 min alone (2026-12-07).
WAITING_FILES = ("tests/test_slurm.py",)


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    from xdist.scheduler import LoadFileScheduling

    if config.option.dist != "loadfile":
        return None
    if not callable(getattr(LoadFileScheduling, "_assign_work_unit", None)):
        # the override below would never be called, and the suite would just run minutes longer
        raise pytest.UsageError(
            "tests/conftest.py: this pytest-xdist's LoadFileScheduling has no _assign_work_unit; "
            "update WaitingFilesFirst to deal WAITING_FILES first"
        )

    class WaitingFilesFirst(LoadFileScheduling):
        reordered = False

        def _assign_work_unit(self, node) -> None:
            if not self.reordered:  # the queue is complete at the first deal
                for scope in reversed([s for s in self.workqueue if s in WAITING_FILES]):
                    self.workqueue.move_to_end(scope, last=False)
                self.reordered = True
            super()._assign_work_unit(node)

    return WaitingFilesFirst(config, log)


REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MINI = SHARED / "speechocean762-mini"


@pytest.fixture(scope="session")
def mini() -> Path:
    if not (MINI / "resource" / "scores.json").is_file():
        pytest.fail(f"the real mini corpus is expected at {MINI} (../shared beside the repo)")
    return MINI


def subset_corpus(src: Path, dst: Path, per_split: int) -> Path:
    """Copy the first ``per_split`` utterances of each split, keeping the official layout."""
    scores = json.loads((src / "resource" / "scores.json").read_text())
    keep: dict[str, dict] = {}
    for split in ("train", "test"):
        lines = (src / split / "wav.scp").read_text().splitlines()[:per_split]
        ids = [line.split()[0] for line in lines]
        (dst / split).mkdir(parents=True)
        for name in ("wav.scp", "text", "utt2spk"):
            rows = [r for r in (src / split / name).read_text().splitlines() if r.split()[0] in ids]
            (dst / split / name).write_text("\n".join(rows) + "\n")
        for line in lines:
            utt, rel = line.split(maxsplit=1)
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src / rel, dst / rel)
            keep[utt] = scores[utt]
    (dst / "resource").mkdir()
    (dst / "resource" / "scores.json").write_text(json.dumps(keep, indent=2, sort_keys=True))
    return dst


@pytest.fixture
def small_corpus(mini: Path, tmp_path: Path) -> Path:
    return subset_corpus(mini, tmp_path / "corpus", per_split=3)


def write_hf_parquet(corpus: Path, out: Path) -> Path:
    """The corpus in the Hub repo's parquet form (schema of mispeech/speechocean762)."""
    import datasets

    from pronlora.data.kaldi import KaldiCorpus

    rows: dict[str, list[dict]] = {"train": [], "test": []}
    for raw in KaldiCorpus(corpus).utterances():
        rec = dict(raw.record)
        rec["words"] = [
            {**w, "phones": list(w["phones"]), "mispronunciations": w.get("mispronunciations", [])}
            for w in rec["words"]
        ]
        rec.update(speaker=raw.speaker, gender="m", age=10)
        rec["audio"] = {"bytes": raw.audio.path.read_bytes(), "path": f"{raw.utt_id}.wav"}
        rows[raw.split].append(rec)
    for split, items in rows.items():
        ds = datasets.Dataset.from_list(items).cast_column("audio", datasets.Audio(decode=False))
        (out / "data").mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(out / "data" / f"{split}-00000-of-00001.parquet"))
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once per run, not once per xdist worker (16 s each, most of it the o200k merge
    table); every test only reads it."""
    import fcntl

    from pronlora.devtools.random_checkpoint import make_random_checkpoint

    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return make_random_checkpoint("tiny", tmp_path_factory.mktemp("tiny"))
    run_root = tmp_path_factory.getbasetemp().parent  # this run's, shared by its workers
    out, done = run_root / "tiny-model", run_root / "tiny-model.done"
    with open(run_root / "tiny-model.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(out, ignore_errors=True)
            make_random_checkpoint("tiny", out)
            done.touch()
    return out


@pytest.fixture(scope="session")
def demo_prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pronlora.data.prep import prepare
    from pronlora.devtools.synthetic_corpus import make_demo_corpus

    root = tmp_path_factory.mktemp("demo")
    corpus = make_demo_corpus(root / "corpus", utterances=12, seed=1)
    return prepare("kaldi", corpus, root / "prepared").out


@pytest.fixture(scope="session")
def trained_run(
    tiny_model: Path, demo_prepared: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    from pronlora.core.config import load_config
    from pronlora.train.recipe import train

    run = tmp_path_factory.mktemp("run") / "smoke"
    assert train(load_config("smoke", ["epochs=1"]), demo_prepared, tiny_model, run) == 0
    return run


def train_job(prepared: Path, model: Path, run: Path, *extra: str) -> subprocess.CompletedProcess:
    """``jobs/train.py --config smoke`` as a user runs it."""
    args = ["--prepared", str(prepared), "--model", str(model), "--run-dir", str(run), *extra]
    return subprocess.run(
        [sys.executable, str(REPO / "jobs" / "train.py"), "--config", "smoke", *args],
        capture_output=True,
        text=True,
    )
