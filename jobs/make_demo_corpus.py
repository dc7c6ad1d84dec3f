#!/usr/bin/env python3
"""Write a small SYNTHETIC corpus in the SpeechOcean762 layout (for demos and tests)."""

from __future__ import annotations

import argparse

from pronlora.core.cli import run_job
from pronlora.devtools.synthetic_corpus import make_demo_corpus


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--utterances", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = make_demo_corpus(args.out, args.utterances, args.seed)
    print(f"wrote synthetic corpus {out} ({args.utterances} utterances)")
    return 0


if __name__ == "__main__":
    run_job(main, (ValueError,))
