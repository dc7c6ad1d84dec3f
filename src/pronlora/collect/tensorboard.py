"""Collect's metrics as TensorBoard scalars: each run's test metrics per epoch with their 95 %
intervals, beside its training curves (``tensorboard --logdir`` over the grid dir shows both).

Event files carry wall times, so the folder is rebuilt whole on every collect and swapped in
at once: a rerun never mixes an old collect's points with a new one's.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

from pronlora.collect.stage import METRIC_KEYS, Entry

FOLDER = "tensorboard"


def write_tensorboard(entries: list[Entry], out: Path) -> Path:
    """``out/tensorboard/<run>/``: ``test/<metric>`` and ``test/<metric>_ci95_{low,high}`` at
    step = epoch (0 for the untrained base). Undefined values (NaN) are left out, not drawn."""
    from torch.utils.tensorboard import SummaryWriter

    final = out / FOLDER
    building = out / f".{FOLDER}.building-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    for run in sorted({e.run for e in entries}):
        with SummaryWriter(str(building / run)) as writer:
            for e in (x for x in entries if x.run == run):
                points = {k: e.metrics[k] for k in METRIC_KEYS}
                for key in e.boot:
                    low_high = e.interval(key)
                    if low_high is not None:
                        points[f"{key}_ci95_low"], points[f"{key}_ci95_high"] = low_high
                for key, value in points.items():
                    if isinstance(value, int | float) and math.isfinite(value):
                        writer.add_scalar(f"test/{key}", value, e.epoch)
    building.mkdir(parents=True, exist_ok=True)
    old = out / f".{FOLDER}.old-{os.getpid()}"
    if final.exists():
        final.rename(old)
    building.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final
