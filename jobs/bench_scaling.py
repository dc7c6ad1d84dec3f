#!/usr/bin/env python3
"""Benchmark data-parallel training on 1..N GPUs of one node (see pronlora.devtools.bench_scaling).

Writes bench/results/<gpu>-<date>-scaling<tag>.json and .md. Example (a node of 4 GPUs):
  python jobs/bench_scaling.py --model /tmp/full --make-checkpoint --config paper_r64 \
      --quantization bf16,nf4 --engines zero2 --gpus 1,2,4
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import traceback
from pathlib import Path

import torch

from pronlora.core.cli import run_job
from pronlora.core.config import ConfigError, accumulation_steps, load_config
from pronlora.devtools.bench import make_bench_data, results_header, write_results
from pronlora.devtools.bench_scaling import compare, markdown, run_point

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True, help="snapshot dir (see --make-checkpoint)")
    ap.add_argument("--make-checkpoint", action="store_true", help="write a full-size random one")
    ap.add_argument("--config", default="paper_r64")
    ap.add_argument("--quantization", default="bf16")
    ap.add_argument("--engines", default="zero2")
    ap.add_argument("--gpus", default="1,2", help="process counts to compare, 1 first")
    ap.add_argument("--steps", type=int, default=12, help="optimizer steps per run")
    ap.add_argument("--warmup", type=int, default=3, help="steps left out of the throughput")
    ap.add_argument("--set", action="append", default=[], help="config override key=value")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    counts = [int(g) for g in args.gpus.split(",")]
    if torch.cuda.is_available() and max(counts) > torch.cuda.device_count():
        raise ConfigError(f"--gpus {args.gpus}: this node has {torch.cuda.device_count()} GPU(s)")
    if args.steps <= args.warmup:
        raise ConfigError(f"--steps {args.steps} must exceed --warmup {args.warmup}")
    model = Path(args.model).resolve()
    if args.make_checkpoint and not (model / "config.json").is_file():
        from pronlora.devtools.random_checkpoint import make_random_checkpoint

        make_random_checkpoint("full", model)
    plans = []
    for quant in args.quantization.split(","):
        for engine in args.engines.split(","):
            overrides = [f"quantization={quant}", f"engine={engine}", *args.set]
            cfg = load_config(args.config, overrides)  # refuses e.g. zero3 + nf4 up front
            for n in counts:
                accumulation_steps(cfg, n)
            plans.append((f"{args.config} {quant} {engine}", overrides, cfg))
    work = Path(tempfile.mkdtemp(prefix="pronlora-scaling-"))
    n_rows = max(cfg.effective_batch for _, _, cfg in plans) * args.steps
    prepared = make_bench_data(
        work / "prepared", REPO / "bench" / "mini_durations.json", (n_rows + 1) // 2
    )
    series = []
    for setup, overrides, _ in plans:
        points = []
        for n in counts:
            run_dir = work / "runs" / f"{setup.replace(' ', '-')}-{n}"
            try:
                point = run_point(
                    REPO / "jobs" / "train.py",
                    n,
                    args.config,
                    overrides,
                    model,
                    prepared,
                    run_dir,
                    args.steps,
                    args.warmup,
                )
            except Exception as exc:  # record it: one failure must not void the rest
                traceback.print_exc()
                point = {"procs": n, "error": f"{type(exc).__name__}: {exc}"[-2000:]}
            print(setup, json.dumps(point), flush=True)
            points.append(point)
        ok = [p for p in points if "error" not in p]
        series.append(
            {
                "setup": setup,
                "overrides": overrides,
                "points": compare(ok) + [p for p in points if "error" in p],
            }
        )
    results = {
        **results_header(),
        "gpus_on_node": torch.cuda.device_count(),
        "steps": args.steps,
        "warmup": args.warmup,
        "series": series,
    }
    write_results(results, Path(args.out), f"-scaling{args.tag}", markdown(results))
    shutil.rmtree(work, ignore_errors=True)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    run_job(main, (ConfigError,))
