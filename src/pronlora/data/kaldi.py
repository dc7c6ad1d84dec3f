"""Loader for the official SpeechOcean762 layout (Kaldi data dirs + resource/scores.json)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

from pronlora.data.corpus import AudioRef, RawUtterance

SPLITS: tuple[str, ...] = ("train", "test")
_KALDI_FILES = ("wav.scp", "text", "utt2spk")


class CorpusLayoutError(ValueError):
    """The corpus directory is not in the layout the loader reads."""


def _read_table(path: Path) -> dict[str, str]:
    """Kaldi ``key value...`` lines (tab or space separated) as a dict."""
    table: dict[str, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise CorpusLayoutError(f"{path}:{n}: expected '<key> <value>', got {line!r}")
        table[parts[0]] = parts[1].strip()
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
            scores = json.loads(self.scores_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise CorpusLayoutError(f"{self.scores_path}: not valid JSON ({exc})") from None
        record_file = str(self.scores_path)
        for split in SPLITS:
            d = self.root / split
            wavs = _read_table(d / "wav.scp")
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
