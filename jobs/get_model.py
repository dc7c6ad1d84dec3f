#!/usr/bin/env python3
"""Get the model: download Phi-4-multimodal's native revision, or check a snapshot offline.

  python jobs/get_model.py --out DIR     download (resumable) and check
  python jobs/get_model.py --check DIR   check only: format, files, shard index, adapter, tokenizer

Exit 0: the snapshot is usable. Exit 2: what is wrong, with the file and the fix.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pronlora.core.cli import run_job
from pronlora.core.errors import InputError
from pronlora.model.hub import download_snapshot
from pronlora.model.snapshot import check_snapshot, describe_snapshot


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--out", type=Path, help="download the native revision into this dir")
    what.add_argument("--check", type=Path, help="validate this snapshot dir offline")
    args = ap.parse_args()
    model_dir = download_snapshot(args.out) if args.out else args.check
    check_snapshot(model_dir)
    print(f"{model_dir}: usable ({describe_snapshot(model_dir)})")
    return 0


if __name__ == "__main__":
    run_job(main, (InputError,))
