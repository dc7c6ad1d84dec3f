"""The on-disk layout of prepared dirs, run dirs and the model cache: defined here only.

Every stage and both launchers take their paths from these classes, so a stage reads the
previous stage's files without importing it (ESPnet style).

Prepared dir::

    manifest.json  train.jsonl  test.jsonl  [audio/]

    The manifest records the splits' content hash with each file's size and mtime: a stage
    trusts the hash while both are unchanged and hashes the files again when not.

Run dir::

    config.yaml  versions.json  run.json      resolved config and provenance
    .lock                                     the writer holding the run dir
    train_log.jsonl                           loss, lr, tokens/s, GPU memory per logging step
    tensorboard/  tracking.json               the same as TensorBoard events; tracked run ids
    wandb/  mlruns/                           W&B's offline files, MLflow's store (if asked)
    checkpoints/epoch-N/                      adapter (+ unfrozen.safetensors), meta.json
    checkpoints/done.json                     written when training finished
    trainer/checkpoint-STEP/                  step checkpoints for resumption
    predictions/<checkpoint>/shard-I-of-N.{jsonl,done.json,lock}   test split
    predictions-<split>/<checkpoint>/...      any other split
    report/  logs/                            report/tensorboard/: collect's metrics per epoch

Grid dir (a launch plan's --run-dir): its runs' dirs, ``report/``, ``submitit/``,
``submission.json`` (the plan as submitted: runs, jobs, log patterns, estimates, the command),
``job_ids.txt`` (``key=job id`` lines, the latest submission's last) and, on the local
executor, ``job_times.jsonl`` (each job's wall time, compared with the plan's estimate). A
single-config plan keeps the same files in its run dir.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pronlora.core.atomic import read_jsonl
from pronlora.core.errors import ConfigError, DataError

SPLITS: tuple[str, ...] = ("train", "test")
UNFROZEN_FILE = "unfrozen.safetensors"
# written into every epoch checkpoint before it is published: a checkpoint without it is unfinished
CHECKPOINT_META = "meta.json"
EPOCH_DIR = re.compile(r"epoch-\d+")
BASE_CHECKPOINT = "base"
JOB_TIMES = "job_times.jsonl"
SUBMISSION = "submission.json"
JOB_IDS = "job_ids.txt"


def checkpoint_name(name: str) -> str:
    """A checkpoint of a run is ``base`` or ``epoch-N``: never a path (outputs stay inside)."""
    if name != BASE_CHECKPOINT and not EPOCH_DIR.fullmatch(name):
        raise DataError(
            f"--checkpoint {name!r}: expected base or epoch-N (a checkpoint of the run)"
        )
    return name


def no_links_inside(root: Path, path: Path) -> Path:
    """``path``, checked to lie inside ``root`` with no symbolic link on the way: run dirs are
    group-writable, and a link planted by anyone in the group would carry a write elsewhere."""
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        raise DataError(f"{path}: outside {root}") from None
    if ".." in parts:
        raise DataError(f"{path}: '..' inside {root}")
    here = root
    for part in parts:
        here = here / part
        if here.is_symlink():
            raise _planted_link(here, root)
    return path


def no_links_in_tree(root: Path, path: Path) -> None:
    """``path`` as ``no_links_inside`` checks it and, for a folder, everything in it: a job
    that writes into folders of its own (the Trainer's checkpoints, TensorBoard's events)
    would follow a link planted anywhere below them."""
    no_links_inside(root, path)
    if path.is_dir():
        for here, dirs, files in os.walk(path):  # links are listed, never entered
            for name in sorted((*dirs, *files)):
                if (Path(here) / name).is_symlink():
                    raise _planted_link(Path(here) / name, root)


def _planted_link(link: Path, root: Path) -> DataError:
    return DataError(
        f"{link}: a symbolic link inside {root}; pronlora writes only real files and "
        "folders there (remove the link)"
    )


def read_json_file(path: Path, what: str = "") -> Any:
    """JSON from a file; a missing or corrupt one is a DataError naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: missing{f' ({what})' if what else ''}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None


@dataclass(frozen=True)
class PreparedDir:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).resolve())

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def split_path(self, split: str) -> Path:
        return self.root / f"{split}.jsonl"

    def audio_file(self, split: str, utt_id: str) -> Path:
        """Where prep writes a clip the corpus holds as bytes only (the Hugging Face form),
        never through a link planted in the prepared dir."""
        return no_links_inside(self.root, self.root / "audio" / split / f"{utt_id}.wav")

    def manifest(self) -> dict[str, Any]:
        data = read_json_file(self.manifest_path, f"rerun jobs/prep.py --out {self.root}")
        if not isinstance(data, dict):
            raise DataError(f"{self.manifest_path}: expected a JSON object")
        return data

    def load_split(self, split: str) -> list[dict[str, Any]]:
        """The instances of a split, checked: fields present, audio files still there, the
        files what prep wrote (``verified_hash``)."""
        path = self.split_path(split)
        if not path.is_file():
            raise DataError(f"--prepared {self.root}: no {split}.jsonl (run jobs/prep.py first)")
        rows = read_jsonl(path)
        if not rows:
            raise DataError(f"{path}: no instances")
        for n, row in enumerate(rows, 1):
            fields = ("id", "task", "prompt", "audio")
            absent = [k for k in fields if not isinstance(row.get(k), str)]
            if absent:
                raise DataError(f"{path}:{n}: instance without {', '.join(absent)}")
        gone = sorted({r["audio"] for r in rows if not Path(r["audio"]).is_file()})
        if gone:
            raise DataError(
                f"{path}: the audio of {len(gone)} instance(s) is missing, e.g. {gone[0]} "
                f"(corpus moved or deleted after prep? rerun jobs/prep.py --out {self.root})"
            )
        self.verified_hash()
        return rows

    def content_hash(self) -> str | None:
        """sha256 over the splits' files (None while one is missing)."""
        h = hashlib.sha256()
        for split in SPLITS:
            path = self.split_path(split)
            if not path.is_file():
                return None
            h.update(path.read_bytes())
        return h.hexdigest()

    def _stats(self) -> dict[str, dict[str, int]]:
        out = {}
        for split in SPLITS:
            st = self.split_path(split).stat()
            out[split] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        return out

    def content_record(self) -> dict[str, Any]:
        """What a manifest records of the splits it describes (written by prep, last)."""
        return {"content_hash": self.content_hash(), "files": self._stats()}

    def verified_hash(self) -> str:
        """The splits' content hash, checked against the manifest: files edited after prep, or
        a prep killed before its manifest, are named instead of being used."""
        manifest = self.manifest()
        recorded = manifest.get("content_hash")
        if not isinstance(recorded, str):
            raise DataError(
                f"{self.manifest_path}: no content_hash (prep did not finish?); "
                f"rerun jobs/prep.py --out {self.root}"
            )
        try:
            unchanged = manifest.get("files") == self._stats()
        except FileNotFoundError:
            unchanged = False
        if unchanged:
            return recorded
        actual = self.content_hash()
        if actual != recorded:
            raise DataError(
                f"--prepared {self.root}: {' and '.join(f'{s}.jsonl' for s in SPLITS)} are not "
                f"what prep wrote (content hash {str(actual)[:12]}, the manifest records "
                f"{recorded[:12]}): edited after prep, or a prep stopped before its manifest; "
                f"rerun jobs/prep.py --out {self.root}"
            )
        return recorded


@dataclass(frozen=True)
class RunDir:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).resolve())

    run_json = property(lambda self: self.root / "run.json")
    config_yaml = property(lambda self: self.root / "config.yaml")
    versions_json = property(lambda self: self.root / "versions.json")
    lock = property(lambda self: self.root / ".lock")
    train_log = property(lambda self: self.root / "train_log.jsonl")
    tensorboard = property(lambda self: self.root / "tensorboard")
    tracking_json = property(lambda self: self.root / "tracking.json")
    wandb = property(lambda self: self.root / "wandb")  # W&B's offline files (WANDB_DIR)
    mlruns = property(lambda self: self.root / "mlruns")  # MLflow's file store
    checkpoints = property(lambda self: self.root / "checkpoints")
    done_json = property(lambda self: self.root / "checkpoints" / "done.json")
    trainer = property(lambda self: self.root / "trainer")
    report = property(lambda self: self.root / "report")
    logs = property(lambda self: self.root / "logs")

    @property
    def training_outputs(self) -> tuple[Path, ...]:
        """What a training job writes (files, and folders with everything in them)."""
        return (
            self.run_json,
            self.config_yaml,
            self.versions_json,
            self.train_log,
            self.tracking_json,
            self.wandb,
            self.mlruns,
            self.tensorboard,
            self.checkpoints,
            self.trainer,
        )

    def check_training_outputs(self) -> None:
        """No symbolic link at or below anything a training job writes (group-writable run
        dirs: a planted link would carry the job's writes elsewhere)."""
        for path in self.training_outputs:
            no_links_in_tree(self.root, path)

    def checkpoint(self, name: str) -> Path:
        return self.checkpoints / name

    def complete_checkpoint(self, name: str) -> Path | None:
        """The dir of a complete checkpoint of this run (its ``meta.json`` is written with
        it); None for ``base``, the untrained adapter. A missing or unfinished one is refused."""
        if checkpoint_name(name) == BASE_CHECKPOINT:
            return None
        path = self.checkpoint(name)
        if not (path / CHECKPOINT_META).is_file():
            raise ConfigError(f"--checkpoint {name}: {path} is missing or incomplete")
        return path

    def epoch(self, n: int) -> Path:
        return self.checkpoints / f"epoch-{n}"

    def epoch_checkpoints(self) -> list[str]:
        """Names of the finished epoch checkpoints (``epoch-N``; never a ``.partial`` one)."""
        found = [p for p in self.checkpoints.glob("epoch-*") if EPOCH_DIR.fullmatch(p.name)]
        return [p.name for p in sorted(found, key=lambda p: int(p.name.split("-")[1]))]

    def predictions(self, checkpoint: str, split: str = "test") -> Path:
        """``predictions/`` holds the test split (what collect scores); another split has its
        own ``predictions-<split>/`` so its shards never collide with the test ones."""
        root = "predictions" if split == "test" else f"predictions-{split}"
        return self.root / root / checkpoint_name(checkpoint)

    def prediction_checkpoints(self) -> list[Path]:
        root = self.root / "predictions"
        return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []

    def shard(
        self, checkpoint: str, shard: int, num_shards: int, split: str = "test"
    ) -> tuple[Path, Path, Path]:
        """(lines, done marker, lock) of one predictions shard, none of them reached through
        a symbolic link."""
        stem = self.predictions(checkpoint, split) / f"shard-{shard}-of-{num_shards}"
        paths = (
            stem.with_name(stem.name + ".jsonl"),
            stem.with_name(stem.name + ".done.json"),
            stem.with_name(stem.name + ".lock"),
        )
        for path in paths:
            no_links_inside(self.root, path)
        return paths

    def shard_settings(
        self, checkpoint: str, shard: int, num_shards: int, split: str = "test"
    ) -> Path:
        """The decoding settings a shard's lines were written under, written before its first
        line, so that a resume under other settings is refused instead of mixed in."""
        lines = self.shard(checkpoint, shard, num_shards, split)[0]
        path = lines.with_name(lines.name.removesuffix(".jsonl") + ".settings.json")
        no_links_inside(self.root, path)
        return path

    def read_train_log(self) -> list[dict[str, Any]]:
        """The training log's entries, each with its optimizer ``step``. A last line without
        its newline is being written (or was cut off by a kill) and is left out; a corrupt
        complete line is a DataError naming the file and line."""
        if not self.train_log.is_file():
            return []
        data = self.train_log.read_bytes()
        entries = []
        for n, raw in enumerate(data[: data.rfind(b"\n") + 1].split(b"\n")[:-1], 1):
            try:
                entry = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                entry = None
            if not isinstance(entry, dict) or not isinstance(entry.get("step"), int):
                raise DataError(f"{self.train_log}:{n}: not a training log entry")
            entries.append(entry)
        return entries

    def read_run(self) -> dict[str, Any]:
        data = read_json_file(self.run_json)
        if not isinstance(data, dict) or "config" not in data:
            raise DataError(f"{self.run_json}: not a pronlora run record")
        return data


def model_cache() -> Path:
    """The one cache of derived model files (the merged speech snapshot), keyed inside by the
    snapshot's hash: ``$PRONLORA_CACHE``, else ``~/.cache/pronlora``. Training, inference and
    the benchmarks share it, so the merge is built once per snapshot."""
    env = os.environ.get("PRONLORA_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "pronlora"


def compile_cache() -> Path:
    """torch.compile's cache (inductor's FX graphs and kernels) inside the model cache, so the
    jobs of a grid, on every node that sees ``$PRONLORA_CACHE``, compile the decoder layers once."""
    return model_cache() / "inductor"
