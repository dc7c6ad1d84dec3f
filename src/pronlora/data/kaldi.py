"""Loader for the official SpeechOcean762 layout (Kaldi data dirs + resource/scores.json)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

from pronlora.core.audio import AudioRef
from pronlora.core.errors import DataError
from pronlora.core.layout import SPLITS
from pronlora.data.corpus import RawUtterance

_KALDI_FILES = ("wav.scp", "text", "utt2spk")


class CorpusLayoutError(DataError, ValueError):
    """The corpus directory is not in the layout the loader reads."""


def read_utf8(path: Path) -> str:
    """File text; bytes that are not UTF-8 are an error naming the file and line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise CorpusLayoutError(
            f"{path}:{line}: not UTF-8 (byte {data[exc.start]:#04x} at offset {exc.start})"
        ) from None


def _read_table(path: Path) -> dict[str, str]:
    """Kaldi ``key value...`` lines (tab or space separated) as a dict; a key twice is an error."""
    table: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for n, line in enumerate(read_utf8(path).splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise CorpusLayoutError(f"{path}:{n}: expected '<key> <value>', got {line!r}")
        if parts[0] in table:
            raise CorpusLayoutError(
                f"{path}:{n}: key {parts[0]} already given on line {first_line[parts[0]]}"
            )
        table[parts[0]] = parts[1].strip()
        first_line[parts[0]] = n
    return table


class KaldiCorpus:
    """The official directory layout: ``{train,test}/``, ``WAVE/``, ``resource/scores.json``."""

    source = "kaldi"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise CorpusLayoutError(f"{self.root}: corpus directory does not exist")
        self.scores_path = self.root / "resource" / "scores.json"
        missing = [
            str(p)
            for p in [self.scores_path] + [self.root / s / f for s in SPLITS for f in _KALDI_FILES]
            if not p.is_file()
        ]
        if missing:
            raise CorpusLayoutError(
                "not the official SpeechOcean762 layout; missing: " + ", ".join(missing)
            )

    def _metadata_files(self) -> list[Path]:
        return [self.scores_path] + [self.root / s / f for s in SPLITS for f in _KALDI_FILES]

    def fingerprint(self) -> str:
        """Changes when any annotation or list changes, or any audio file's size or mtime."""
        h = hashlib.sha256()
        for path in self._metadata_files():
            h.update(str(path.relative_to(self.root)).encode())
            h.update(hashlib.sha256(path.read_bytes()).digest())
        for split in SPLITS:
            for _, rel in sorted(_read_table(self.root / split / "wav.scp").items()):
                path = self.root / rel
                try:
                    st = path.stat()
                    h.update(f"{rel}:{st.st_size}:{st.st_mtime_ns}".encode())
                except OSError:
                    h.update(f"{rel}:missing".encode())
        return h.hexdigest()

    def utterances(self) -> Iterator[RawUtterance]:
        try:
            scores = json.loads(read_utf8(self.scores_path))
        except json.JSONDecodeError as exc:
            raise CorpusLayoutError(f"{self.scores_path}: not valid JSON ({exc})") from None
        if not isinstance(scores, dict):
            raise CorpusLayoutError(
                f"{self.scores_path}: expected an object keyed by utterance id at the top "
                f"level, got a {type(scores).__name__}"
            )
        record_file = str(self.scores_path)
        for split in SPLITS:
            d = self.root / split
            wavs = _read_table(d / "wav.scp")
            if not wavs:
                raise CorpusLayoutError(f"{d / 'wav.scp'}: empty; the {split} split has no audio")
            texts = _read_table(d / "text")
            spk = _read_table(d / "utt2spk")
            for utt_id, rel in wavs.items():
                path = (self.root / rel).resolve()
                yield RawUtterance(
                    utt_id=utt_id,
                    split=split,
                    speaker=spk.get(utt_id, utt_id[1:5]),
                    kaldi_text=texts.get(utt_id),
                    record=scores.get(utt_id),
                    record_file=record_file,
                    audio=AudioRef(name=str(path), path=path),
                )
