#!/usr/bin/env python3
"""Hand a trained checkpoint over: the task adapter (PEFT layout) with a model card (config,
data, test metrics with intervals, versions) and provenance, and with --merged a whole
snapshot in the native layout that --model and jobs/get_model.py --check accept.

  python jobs/export.py --run-dir R --checkpoint epoch-3 --out DIR [--merged] [--report REPORT]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pronlora.core.cli import run_job
from pronlora.model.export import export


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--run-dir", required=True, type=Path)
    ap.add_argument("--checkpoint", required=True, help="epoch-N")
    ap.add_argument("--out", required=True, type=Path, help="a new folder")
    ap.add_argument("--merged", action="store_true", help="also write a merged snapshot")
    ap.add_argument(
        "--report", type=Path, help="collect's output dir with metrics.json (default: the run's)"
    )
    args = ap.parse_args()
    out = export(
        args.run_dir.resolve(), args.checkpoint, args.out.resolve(), args.merged, args.report
    )
    print(f"exported {args.run_dir} {args.checkpoint} -> {out}")
    return 0


if __name__ == "__main__":
    run_job(main)
