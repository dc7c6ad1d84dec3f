"""Atomic file writes: a reader (or a resumed job) never sees a half-written file.

Files are created with the mode the process umask allows (0666 & ~umask, like ``open``), not
``mkstemp``'s private 0600: a lab shares its prepared data, run dirs and reports.
``follow_umask`` does the same for trees written by libraries that create private files
(safetensors writes 0600).
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from pronlora.core.errors import DataError


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path``; on success fsync and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, umask_mode())
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT) and not exc.filename:
            raise OSError(exc.errno, exc.strerror, str(path)) from None  # names the file
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def open_append(path: str | os.PathLike[str]) -> Iterator[IO[str]]:
    """``path`` opened for appending lines (created as the umask allows), never through a
    link: one planted there after a job's checks is refused, not followed."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
    try:
        fd = os.open(path, flags, umask_mode())
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DataError(
                f"{path}: a symbolic link; pronlora appends only to real files (remove the link)"
            ) from None
        raise
    with os.fdopen(fd, "a", encoding="utf-8") as fh:
        yield fh


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def umask_mode(directory: bool = False) -> int:
    """The mode ``open``/``mkdir`` would give a new file or directory under the umask."""
    return (0o777 if directory else 0o666) & ~current_umask()


def follow_umask(path: str | os.PathLike[str]) -> None:
    """Give ``path`` (a file, or a tree) the modes the umask allows for new files and dirs."""
    path = Path(path)
    file_mode, dir_mode = umask_mode(), umask_mode(directory=True)
    if path.is_file():
        path.chmod(file_mode)
        return
    path.chmod(dir_mode)
    for sub in path.rglob("*"):
        if not sub.is_symlink():
            sub.chmod(dir_mode if sub.is_dir() else file_mode)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_open(path, "w") as fh:
        fh.write(text)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def dumps_json(obj: Any) -> str:
    """Canonical JSON for files people diff: sorted keys, two-space indent, final newline."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_text(path, dumps_json(obj))


def jsonl_line(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False) + "\n"


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[Any]) -> None:
    with atomic_open(path, "w") as fh:
        for row in rows:
            fh.write(jsonl_line(row))


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a JSONL file of objects; a malformed line is an error naming file and line number."""
    rows = []
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(f"{path}:{n}: not UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{n}: expected a JSON object per line")
            rows.append(row)
    return rows
