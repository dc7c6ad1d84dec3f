"""The in-memory form of a SpeechOcean762 utterance, before and after validation.

Both loaders (official Kaldi layout, Hugging Face dataset) produce ``RawUtterance``; one
validator turns it into an ``Utterance`` or a list of ``Problem``s, so both forms are held to
the same rules and give the same instances.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pronlora.core.audio import AudioRef, check_audio
from pronlora.core.phones import Mispronunciation, PhoneError, perceived_alignment
from pronlora.core.protocol import SCORE_FIELDS, SCORE_RANGE


@dataclass(frozen=True)
class Problem:
    """One reason an utterance cannot be used, with where to look."""

    utt_id: str
    file: str
    message: str

    def __str__(self) -> str:
        return f"{self.utt_id} [{self.file}]: {self.message}"


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

    audio_problems, duration = check_audio(raw.audio)
    for message in audio_problems:
        bad(raw.audio.name, message)

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
