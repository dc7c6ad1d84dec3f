#!/usr/bin/env python3
"""Stage 1: SpeechOcean762 (official layout or HF form) -> prepared APA/MDD instances."""

from __future__ import annotations

import argparse

from pronlora.core.cli import run_job
from pronlora.core.protocol import TASKS
from pronlora.data.kaldi import CorpusLayoutError
from pronlora.data.prep import PrepError, prepare


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--source", choices=["kaldi", "hf"], required=True)
    ap.add_argument("--data", required=True, help="corpus dir, HF parquet/arrow dir, or Hub id")
    ap.add_argument(
        "--out", required=True, help="output dir (train.jsonl, test.jsonl, manifest.json)"
    )
    ap.add_argument(
        "--tasks", default=",".join(TASKS), help="comma-separated subset of APA,MDD (default both)"
    )
    ap.add_argument(
        "--skip-invalid",
        action="store_true",
        help="drop invalid utterances (listed in the manifest) instead of failing",
    )
    args = ap.parse_args()
    tasks = tuple(t.strip().upper() for t in args.tasks.split(",") if t.strip())
    result = prepare(args.source, args.data, args.out, tasks, args.skip_invalid)
    m = result.manifest
    state = "rebuilt" if result.rebuilt else "up to date, nothing to do"
    print(f"{result.out}: {state}; counts {m['counts']}; skipped {len(m['skipped'])}")
    return 0


if __name__ == "__main__":
    run_job(main, (PrepError, CorpusLayoutError, ValueError, FileNotFoundError))
