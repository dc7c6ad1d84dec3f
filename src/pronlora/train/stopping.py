"""The one stop-and-requeue protocol of training, whichever launcher started it.

A stop request (USR1, USR2 or TERM, or the stop file appearing) makes every rank finish the
optimizer step in progress, agree on the stop (any rank's request stops all at the same step),
save a step checkpoint and return ``EXIT_REQUEUE``; the launcher then requeues the job and the
rerun resumes from that checkpoint, on any number of GPUs. The sbatch template
(``slurm/lib/train.sh``) requeues with ``scontrol requeue``; submitit's ``TrainStage`` hands
over to submitit's own requeue, which resubmits the stage. Signal handlers are installed by the
entry points (``jobs/train.py``, ``TrainStage``) only: building or running a trainer, in a
benchmark say, never changes how the process reacts to signals.
"""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Exit status meaning "checkpoint saved after a stop request; requeue me".
EXIT_REQUEUE = 3
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)


@dataclass
class StopRequest:
    """Why this process was asked to stop (None: not asked), and the file that also asks."""

    stop_file: Path | None = None
    reason: str | None = None

    def asked_here(self) -> bool:
        return self.reason is not None or (self.stop_file is not None and self.stop_file.exists())

    def agree(self, reason: str) -> None:
        """Record a stop this process did not ask for itself (the file, another rank)."""
        if self.reason is None:
            self.reason = reason
            log.warning("stop requested (%s): saving a checkpoint", reason)

    @property
    def stopped(self) -> bool:
        return self.reason is not None


def install_stop_signals(
    request: StopRequest, signals: tuple[signal.Signals, ...] = STOP_SIGNALS
) -> dict[signal.Signals, Any]:
    """Make ``signals`` fill ``request``; returns the handlers they replace (by signal)."""

    def on_signal(signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        log.warning("received %s: saving a checkpoint and stopping", name)
        request.reason = name

    return {sig: signal.signal(sig, on_signal) for sig in signals}
