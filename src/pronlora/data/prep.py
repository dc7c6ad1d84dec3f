"""The data-preparation stage: corpus -> ``train.jsonl``, ``test.jsonl``, ``manifest.json``.

Idempotent like a Kaldi stage: the manifest records a fingerprint of the inputs and options
and a hash of the outputs; a rerun whose fingerprint and outputs match does nothing.
Nothing is written until every utterance has been validated, and each file is replaced
atomically, manifest last, so a killed or failed run never leaves outputs that look finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import soundfile as sf

from pronlora import __version__
from pronlora.core.atomic import atomic_open, write_json, write_jsonl
from pronlora.core.errors import DataError
from pronlora.core.layout import SPLITS, PreparedDir
from pronlora.core.protocol import SAMPLE_RATE, TASKS, Task, prompt_text
from pronlora.data.corpus import Problem, RawUtterance, Utterance, validate
from pronlora.data.hf import HFCorpus
from pronlora.data.instances import build_instances
from pronlora.data.kaldi import KaldiCorpus

log = logging.getLogger(__name__)

SYNTHETIC_MARKER = "SYNTHETIC"
# 2: prompts carry the paper's <|audio_1|> placeholder (the collator maps it to the snapshot's
# audio token), so prepared dirs of format 1 are rebuilt.
MANIFEST_FORMAT = 2


class Corpus(Protocol):
    source: str

    def fingerprint(self) -> str: ...

    def utterances(self): ...  # -> Iterator[RawUtterance]


class PrepError(DataError):
    """Invalid input; ``problems`` lists each one with its utterance and file."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        n = len({p.utt_id for p in problems})
        super().__init__(
            f"{len(problems)} problem(s) in {n} utterance(s); nothing was written "
            f"(rerun with --skip-invalid to drop them):\n{lines}"
        )


@dataclass(frozen=True)
class PrepResult:
    out: Path
    manifest: dict[str, Any]
    rebuilt: bool


def open_corpus(source: str, data: str | Path) -> Corpus:
    if source == "kaldi":
        return KaldiCorpus(data)
    if source == "hf":
        return HFCorpus(data)
    raise ValueError(f"unknown --source {source!r}; expected 'kaldi' or 'hf'")


def _input_fingerprint(corpus: Corpus, tasks: tuple[Task, ...], skip_invalid: bool) -> str:
    spec = {
        "format": MANIFEST_FORMAT,
        "source": corpus.source,
        "corpus": corpus.fingerprint(),
        "tasks": [t.value for t in tasks],
        "skip_invalid": skip_invalid,
        "prompts": {t.value: hashlib.sha256(prompt_text(t).encode()).hexdigest() for t in TASKS},
        "version": __version__,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _is_up_to_date(out: Path, fingerprint: str) -> dict[str, Any] | None:
    try:
        manifest = json.loads(PreparedDir(out).manifest_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if manifest.get("input_fingerprint") != fingerprint:
        return None
    if manifest.get("content_hash") != PreparedDir(out).content_hash():
        return None
    return manifest


def _materialise_audio(utt: Utterance, out: Path) -> str:
    """Path of a 16 kHz mono file for ``utt``; bytes-only audio is written once under ``out``."""
    if utt.audio.path is not None:
        return str(utt.audio.path.resolve())
    dest = PreparedDir(out).audio_file(utt.split, utt.utt_id)
    if not dest.is_file():
        samples, rate = utt.audio.read_int16()
        assert rate == SAMPLE_RATE  # validated before
        with atomic_open(dest, "wb") as fh:
            sf.write(fh, samples, rate, format="WAV", subtype="PCM_16")
    return str(dest)


def validate_all(raws: list[RawUtterance]) -> tuple[list[Utterance], list[Problem]]:
    utts: list[Utterance] = []
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for raw in raws:
        if raw.utt_id in seen:
            problems.append(
                Problem(
                    raw.utt_id,
                    raw.record_file,
                    f"duplicate utterance id (also in {seen[raw.utt_id]})",
                )
            )
            continue
        seen[raw.utt_id] = raw.split
        result = validate(raw)
        if isinstance(result, list):
            problems.extend(result)
        else:
            utts.append(result)
    return utts, problems


def prepare(
    source: str,
    data: str | Path,
    out: str | Path,
    tasks: tuple[Task, ...] = TASKS,
    skip_invalid: bool = False,
) -> PrepResult:
    """Run the stage; raise PrepError (writing nothing) on invalid input unless skipping."""
    out = Path(out).resolve()
    corpus = open_corpus(source, data)
    tasks = tuple(Task(t) for t in tasks)
    if not tasks:
        raise ValueError("--tasks: at least one of APA, MDD is needed")
    fingerprint = _input_fingerprint(corpus, tasks, skip_invalid)
    manifest = _is_up_to_date(out, fingerprint)
    if manifest is not None:
        log.info(
            "%s is up to date with %s (fingerprint %s); nothing to do", out, data, fingerprint[:12]
        )
        return PrepResult(out, manifest, rebuilt=False)

    raws = list(corpus.utterances())
    utts, problems = validate_all(raws)
    if problems and not skip_invalid:
        raise PrepError(problems)
    if not utts:
        raise PrepError(problems or [Problem("-", str(data), "corpus has no utterances")])
    for p in problems:
        log.warning("skipping %s", p)

    rows: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    for utt in sorted(utts, key=lambda u: (u.split, u.utt_id)):
        rows[utt.split].extend(build_instances(utt, tasks, _materialise_audio(utt, out)))
    empty = [s for s in SPLITS if not rows[s]]
    if empty:
        raise DataError(f"{data}: the {' and '.join(empty)} split has no usable utterances")
    for split in SPLITS:
        write_jsonl(PreparedDir(out).split_path(split), rows[split])

    counts = {
        split: {
            "utterances": len({r["utt_id"] for r in rows[split]}),
            **dict(sorted(Counter(r["task"] for r in rows[split]).items())),
        }
        for split in SPLITS
    }
    data_root = Path(data)
    manifest = {
        "format": MANIFEST_FORMAT,
        "source": corpus.source,
        "data": str(data_root.resolve()) if data_root.exists() else str(data),
        "synthetic": data_root.is_dir() and (data_root / SYNTHETIC_MARKER).exists(),
        "tasks": [t.value for t in tasks],
        "counts": counts,
        "audio_seconds": {
            s: round(sum(u.duration_s for u in utts if u.split == s), 2) for s in SPLITS
        },
        "skipped": [{"utt_id": p.utt_id, "file": p.file, "problem": p.message} for p in problems],
        "pronlora_version": __version__,
        "input_fingerprint": fingerprint,
        **PreparedDir(out).content_record(),
    }
    write_json(PreparedDir(out).manifest_path, manifest)
    log.info("wrote %s: %s", out, json.dumps(counts))
    return PrepResult(out, manifest, rebuilt=True)
