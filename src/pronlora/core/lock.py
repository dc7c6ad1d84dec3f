"""Exclusive ownership of an output (a run dir, a predictions shard) by one process.

A lock is a file created with O_EXCL (atomic on local disks and NFS) that names its holder:
host, pid, Slurm job and start time. A holder that is provably gone is taken over with a log
line: a dead pid on this host, or an earlier run of the same Slurm job (a requeued job restarts
under its own id, possibly on another node). A live holder, or one on another host that cannot
be checked, is an error that names it and says how to clear the lock.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from pronlora.core.atomic import umask_mode
from pronlora.core.errors import DataError, InputError

log = logging.getLogger(__name__)


class LockedError(InputError):
    """Another process holds the output."""


def _holder() -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "slurm_job": _slurm_job(),
        "slurm_restart": os.environ.get("SLURM_RESTART_COUNT", "0"),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _slurm_job() -> str | None:
    job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if job:
        return f"{job}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    return os.environ.get("SLURM_JOB_ID")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _gone(holder: dict[str, Any], me: dict[str, Any]) -> str | None:
    """Why the holder provably no longer runs, or None."""
    if holder.get("host") == me["host"]:
        if not _pid_alive(int(holder.get("pid", -1))):
            return f"process {holder.get('pid')} on this host is gone"
        if holder.get("pid") == me["pid"]:
            return "held by this process"
    job = holder.get("slurm_job")
    if job and job == me["slurm_job"] and holder.get("slurm_restart") != me["slurm_restart"]:
        return f"an earlier run of Slurm job {job} (requeued)"
    return None


class OutputLock:
    """``with OutputLock(path, what):`` holds ``path`` for the duration of the block."""

    def __init__(self, path: str | os.PathLike[str], what: str) -> None:
        self.path = Path(path)
        self.what = what
        self.held = False

    def acquire(self) -> None:
        me = _holder()
        for _ in range(3):
            try:
                fd = self._create()
            except FileExistsError:
                holder = self._read()
                if holder is None:  # being written right now, or empty after a crash
                    time.sleep(0.2)
                    holder = self._read() or {}
                why = _gone(holder, me)
                if why is None:
                    raise LockedError(self._busy_message(holder)) from None
                log.warning("taking over %s of %s: %s", self.path, self.what, why)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            self.held = True
            return
        raise LockedError(f"{self.path}: could not take the lock of {self.what} (contended)")

    def _create(self) -> int:
        """The lock file, created exclusively; a folder this user cannot write is named."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, umask_mode())
        except FileExistsError:
            raise
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            raise DataError(
                f"{self.path.parent}: cannot write the lock of {self.what} there "
                f"({exc.strerror}); run as a user who can write it, or use another folder"
            ) from None

    def _read(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path.read_text() or "null")
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return data if isinstance(data, dict) else None

    def _busy_message(self, holder: dict[str, Any]) -> str:
        job = holder.get("slurm_job")
        check = f"`squeue -j {job.split('_')[0]}`" if job else f"`ps -p {holder.get('pid')}`"
        return (
            f"{self.what} is in use by host {holder.get('host')}, pid {holder.get('pid')}"
            f"{f', Slurm job {job}' if job else ''} (since {holder.get('started')}). "
            f"If that process is no longer running (check with {check} on "
            f"{holder.get('host')}), delete {self.path} and rerun."
        )

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
