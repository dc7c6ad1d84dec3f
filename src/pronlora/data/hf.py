"""Loader for the Hugging Face form of SpeechOcean762 (``mispeech/speechocean762``).

Accepts a Hub id (needs network and ``datasets``), a ``save_to_disk`` directory, or a local
copy of the Hub repo's parquet files (``data/train-*.parquet``, ``data/test-*.parquet``).
Audio is read with ``decode=False`` and decoded by soundfile, so neither torchcodec nor
torchaudio is needed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pronlora.core.audio import AudioRef
from pronlora.core.layout import SPLITS
from pronlora.data.corpus import RawUtterance
from pronlora.data.kaldi import CorpusLayoutError


def _parquet_files(root: Path) -> dict[str, list[str]]:
    files: dict[str, list[str]] = {}
    for split in SPLITS:
        found = sorted(str(p) for p in root.rglob(f"{split}-*.parquet"))
        found += sorted(str(p) for p in root.rglob(f"{split}.parquet"))
        if found:
            files[split] = found
    return files


class HFCorpus:
    source = "hf"

    def __init__(self, data: str | Path) -> None:
        self.spec = str(data)
        self.root = Path(data).resolve() if Path(data).exists() else None
        self._files: dict[str, list[str]] = {}
        if self.root is not None and not (self.root / "dataset_dict.json").is_file():
            self._files = _parquet_files(self.root)
            missing = [s for s in SPLITS if s not in self._files]
            if missing:
                raise CorpusLayoutError(
                    f"{self.root}: no parquet files for split(s) {missing} "
                    "(expected <split>-*.parquet, as in the Hub repo's data/ folder)"
                )

    def _load(self) -> Any:
        import datasets

        if self.root is None:
            ds = datasets.load_dataset(self.spec)
        elif self._files:
            ds = datasets.load_dataset("parquet", data_files=self._files)
        else:
            ds = datasets.load_from_disk(str(self.root))
        missing = [s for s in SPLITS if s not in ds]
        if missing:
            raise CorpusLayoutError(f"{self.spec}: dataset has no split(s) {missing}")
        return {s: ds[s].cast_column("audio", datasets.Audio(decode=False)) for s in SPLITS}

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.spec.encode())
        if self.root is None:
            for split, d in self._load().items():
                h.update(f"{split}:{d._fingerprint}".encode())
            return h.hexdigest()
        for path in sorted(p for p in self.root.rglob("*") if p.is_file()):
            st = path.stat()
            h.update(f"{path.relative_to(self.root)}:{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()

    def utterances(self) -> Iterator[RawUtterance]:
        for split, d in self._load().items():
            for n, row in enumerate(d):
                audio = row.get("audio") or {}
                name = audio.get("path") or f"{split}[{n}]"
                utt_id = Path(name).stem
                data = audio.get("bytes")
                path = None
                if data is None and audio.get("path") and Path(audio["path"]).is_file():
                    path = Path(audio["path"])
                record = {k: v for k, v in row.items() if k != "audio"}
                yield RawUtterance(
                    utt_id=utt_id,
                    split=split,
                    speaker=str(row.get("speaker") or utt_id[1:5]),
                    kaldi_text=None,
                    record=record,
                    record_file=f"{self.spec}:{split}[{n}]",
                    audio=AudioRef(name=f"{self.spec}:{split}[{n}]:{name}", path=path, data=data),
                )
