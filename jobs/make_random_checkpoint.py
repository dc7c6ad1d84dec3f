#!/usr/bin/env python3
"""Write a random-weight Phi-4-multimodal snapshot (tiny for CPU tests, full for GPU benchmarks)."""

from __future__ import annotations

import argparse

from pronlora.core.cli import run_job
from pronlora.devtools.random_checkpoint import SIZES, make_random_checkpoint


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", choices=sorted(SIZES), required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = make_random_checkpoint(args.size, args.out, args.seed)
    print(f"wrote {args.size} random-weight checkpoint {out} (random weights: metrics meaningless)")
    return 0


if __name__ == "__main__":
    run_job(main, (ValueError,))
