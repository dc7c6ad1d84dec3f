"""The in-memory form of a SpeechOcean762 utterance, before and after validation.

Both loaders (official Kaldi layout, Hugging Face dataset) produce ``RawUtterance``; one
validator turns it into an ``Utterance`` or a list of ``Problem``s, so both forms are held to
the same rules and give the same instances.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import soundfile as sf

from pronlora.core.phones import Mispronunciation, PhoneError, perceived_alignment
from pronlora.core.protocol import SAMPLE_RATE, SCORE_FIELDS, SCORE_RANGE


@dataclass(frozen=True)
class Problem:
    """One reason an utterance cannot be used, with where to look."""

    utt_id: str
    file: str
    message: str

    def __str__(self) -> str:
        return f"{self.utt_id} [{self.file}]: {self.message}"


@dataclass
class AudioRef:
    """Audio held either as a file on disk or as encoded bytes (HF parquet rows)."""

    name: str
    path: Path | None = None
    data: bytes | None = None

    def _handle(self) -> Any:
        if self.path is not None:
            return str(self.path)
        if self.data is None:
            raise FileNotFoundError(f"{self.name}: no audio bytes or path")
        return io.BytesIO(self.data)

    def info(self) -> sf._SoundFileInfo:
        return sf.info(self._handle())

    def read_int16(self) -> tuple[Any, int]:
        return sf.read(self._handle(), dtype="int16", always_2d=False)

    def truncation(self) -> str | None:
        """Why a WAV holds fewer sample bytes than its header declares, or None.

        libsndfile reads a truncated WAV without complaint and reports the shorter length, so
        a half-copied file would train on half an utterance.
        """
        if self.path is not None:
            with open(self.path, "rb") as fh:
                head = fh.read(1 << 16)
            size = self.path.stat().st_size
        elif self.data is not None:
            head, size = self.data[: 1 << 16], len(self.data)
        else:
            return None
        return wav_truncation(head, size)


def wav_truncation(head: bytes, size: int) -> str | None:
    """Compare a RIFF/WAVE file's ``data`` chunk size with the bytes present (None if fine)."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None  # not a WAV (e.g. FLAC bytes from the Hub): libsndfile checks those
    pos = 12
    while pos + 8 <= len(head):
        chunk, length = head[pos : pos + 4], int.from_bytes(head[pos + 4 : pos + 8], "little")
        if chunk == b"data":
            present = size - (pos + 8)
            if present < length:
                return (
                    f"truncated WAV: its header declares {length} bytes of samples, the file "
                    f"holds {max(present, 0)} (an interrupted copy? copy it again)"
                )
            return None
        pos += 8 + length + (length & 1)
    return None


@dataclass
class RawUtterance:
    utt_id: str
    split: str
    speaker: str
    kaldi_text: str | None
    record: dict[str, Any] | None
    record_file: str
    audio: AudioRef


@dataclass
class Utterance:
    utt_id: str
    split: str
    speaker: str
    text: str
    scores: dict[str, float]
    words: list[str]
    word_phones: list[list[str]]
    mispronunciations: list[Mispronunciation]
    canonical: list[str]
    perceived: list[str]
    audio: AudioRef
    duration_s: float
    notes: list[str] = field(default_factory=list)


def _check_scores(record: dict[str, Any]) -> tuple[dict[str, float], list[str]]:
    scores: dict[str, float] = {}
    errors = []
    lo, hi = SCORE_RANGE
    for key in SCORE_FIELDS:
        value = record.get(key)
        if value is None:
            errors.append(f"missing score {key!r}")
        elif isinstance(value, bool) or not isinstance(value, int | float):
            errors.append(f"score {key!r} is {value!r}, not a number")
        elif not lo <= value <= hi:
            errors.append(f"score {key!r}={value} outside {lo}-{hi}")
        else:
            scores[key] = value
    return scores, errors


def _words(record: dict[str, Any]) -> tuple[list[str], list[list[str]], list[Mispronunciation]]:
    words = record.get("words")
    if not isinstance(words, list) or not words:
        raise PhoneError("no words[] annotation")
    texts, phones, mis = [], [], []
    for w, word in enumerate(words):
        if not isinstance(word, dict):
            raise PhoneError(f"word {w} is a {type(word).__name__} ({word!r}), not an object")
        raw = word.get("phones")
        if isinstance(raw, str):
            raw = raw.split()
        if not isinstance(raw, list) or not raw:
            raise PhoneError(f"word {w} ({word.get('text')!r}): no phones")
        texts.append(str(word.get("text", "")))
        phones.append([str(p) for p in raw])
        for m in word.get("mispronunciations") or []:
            try:
                mis.append(
                    Mispronunciation(
                        word_index=w,
                        index=int(m["index"]),
                        canonical=str(m["canonical-phone"]),
                        pronounced=str(m["pronounced-phone"]),
                    )
                )
            except (KeyError, TypeError, ValueError, AttributeError):
                raise PhoneError(f"word {w}: malformed mispronunciation entry {m!r}") from None
    return texts, phones, mis


def validate(raw: RawUtterance) -> Utterance | list[Problem]:
    """Check one utterance against the protocol; return it or every problem found."""
    problems: list[Problem] = []

    def bad(file: str, message: str) -> None:
        problems.append(Problem(raw.utt_id, file, message))

    duration = 0.0
    try:
        info = raw.audio.info()
    except Exception as exc:  # soundfile raises several types for missing/corrupt files
        bad(raw.audio.name, f"audio missing or unreadable ({type(exc).__name__}: {exc})")
    else:
        if info.samplerate != SAMPLE_RATE:
            bad(
                raw.audio.name,
                f"sample rate {info.samplerate} Hz, expected {SAMPLE_RATE} Hz (SpeechOcean762 is "
                "16 kHz mono; convert with e.g. `sox in.wav -r 16000 -c 1 out.wav`)",
            )
        if info.channels != 1:
            bad(raw.audio.name, f"{info.channels} channels, expected mono")
        if info.frames == 0:
            bad(raw.audio.name, "audio has no samples")
        cut = raw.audio.truncation()
        if cut:
            bad(raw.audio.name, cut)
        duration = info.frames / info.samplerate if info.samplerate else 0.0

    record = raw.record
    if record is None:
        bad(raw.record_file, "utterance has no scores (no annotation record)")
        return problems
    if not isinstance(record, dict):
        bad(raw.record_file, f"annotation is a {type(record).__name__}, not an object")
        return problems
    scores, score_errors = _check_scores(record)
    for msg in score_errors:
        bad(raw.record_file, msg)

    text = str(record.get("text") or raw.kaldi_text or "").strip()
    if not text:
        bad(raw.record_file, "no reference text")
    if raw.kaldi_text is not None and raw.kaldi_text.strip() != text:
        bad(raw.record_file, f"text {text!r} differs from the Kaldi text {raw.kaldi_text!r}")

    try:
        words, word_phones, mis = _words(record)
        canonical, perceived = perceived_alignment(word_phones, mis)
    except PhoneError as exc:
        bad(raw.record_file, str(exc))

    if problems:
        return problems
    return Utterance(
        utt_id=raw.utt_id,
        split=raw.split,
        speaker=raw.speaker,
        text=text,
        scores=scores,
        words=words,
        word_phones=word_phones,
        mispronunciations=mis,
        canonical=canonical,
        perceived=perceived,
        audio=raw.audio,
        duration_s=round(duration, 4),
    )
