#!/usr/bin/env python3
"""Where a submitted plan stands: each run's epochs, step, loss and time left, inference
shards per checkpoint, the report, each job's Slurm state (failed ones with their log and the
command that resumes the plan), and GPU-hours used against the plan's estimate.

  python jobs/status.py DIR [--json]    DIR: the run_dir= that submit.py / pipeline.sh printed
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pronlora.core.cli import run_job
from pronlora.launch.status import describe, grid_status


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("dir", type=Path)
    ap.add_argument("--json", action="store_true", help="the status as one JSON object")
    args = ap.parse_args()
    status = grid_status(args.dir.resolve())
    print(json.dumps(status, indent=1) if args.json else describe(status))
    return 0


if __name__ == "__main__":
    run_job(main)
