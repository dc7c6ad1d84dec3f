"""Audio as every stage checks it: 16 kHz mono, readable, not empty, not a truncated copy.

Prep and the scoring of new recordings hold a clip to the same rules and name the same
problems, so a clip prep refuses is refused by ``jobs/score.py`` in the same words.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import soundfile as sf

from pronlora.core.protocol import SAMPLE_RATE


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


def check_audio(audio: AudioRef) -> tuple[list[str], float]:
    """Every problem of a clip (empty when usable) and its duration in seconds."""
    problems: list[str] = []
    try:
        info = audio.info()
    except Exception as exc:  # soundfile raises several types for missing/corrupt files
        return [f"audio missing or unreadable ({type(exc).__name__}: {exc})"], 0.0
    if info.samplerate != SAMPLE_RATE:
        problems.append(
            f"sample rate {info.samplerate} Hz, expected {SAMPLE_RATE} Hz (SpeechOcean762 is "
            "16 kHz mono; convert with e.g. `sox in.wav -r 16000 -c 1 out.wav`)"
        )
    if info.channels != 1:
        problems.append(f"{info.channels} channels, expected mono")
    if info.frames == 0:
        problems.append("audio has no samples")
    cut = audio.truncation()
    if cut:
        problems.append(cut)
    return problems, (info.frames / info.samplerate if info.samplerate else 0.0)
