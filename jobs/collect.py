#!/usr/bin/env python3
"""Stage 4: score every run's predictions and write Table 3, plots and report.md."""

from __future__ import annotations

import argparse
from pathlib import Path

from pronlora.collect.report import collect_and_report
from pronlora.core.cli import run_job


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prepared", required=True, help="output dir of jobs/prep.py")
    ap.add_argument("--runs", nargs="+", required=True, help="run dirs with predictions/")
    ap.add_argument("--out", required=True)
    ap.add_argument(
        "--allow-partial",
        action="store_true",
        help="collect checkpoints with missing ids, marked partial",
    )
    ap.add_argument(
        "--allow-mixed-decoding",
        action="store_true",
        help="one table for checkpoints decoded under different settings (listed in the report)",
    )
    args = ap.parse_args()
    runs = [Path(r) for r in args.runs]
    paths = collect_and_report(
        Path(args.prepared), runs, Path(args.out), args.allow_partial, args.allow_mixed_decoding
    )
    print(paths["table"].read_text())
    print(f"report: {paths['report'].resolve()}")
    return 0


if __name__ == "__main__":
    run_job(main)
