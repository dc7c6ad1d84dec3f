#!/usr/bin/env python3
"""Benchmark training and inference of named configs on a (random-weight) full-size snapshot.

Writes bench/results/<gpu>-<date>.json and .md. Example (one H100):
  python jobs/bench.py --model /tmp/full --make-checkpoint --config paper_r64,pretrained_r320 \
      --quantization bf16,nf4 --what train,infer
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import traceback
from pathlib import Path

import torch

from pronlora.core.atomic import write_text
from pronlora.core.cli import run_job
from pronlora.core.config import ConfigError, load_config
from pronlora.devtools.bench import (
    VARIANTS,
    bench_infer,
    bench_train,
    make_bench_data,
    markdown,
    results_header,
    write_results,
)

REPO = Path(__file__).resolve().parents[1]


def _train(cfg, model, prepared, run_dir, args):
    return bench_train(cfg, model, prepared, run_dir, args.train_steps)


def _infer(cfg, model, prepared, run_dir, args):
    return bench_infer(cfg, model, prepared, run_dir / "infer")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", help="snapshot dir (see --make-checkpoint)")
    ap.add_argument("--make-checkpoint", action="store_true", help="write a full-size random one")
    ap.add_argument("--config", default="paper_r64")
    ap.add_argument("--quantization", default="bf16,nf4")
    ap.add_argument("--what", default="train,infer")
    ap.add_argument("--train-steps", type=int, default=6)
    ap.add_argument(
        "--utterances", type=int, default=256, help="bench clips (x2 instances; the test split)"
    )
    ap.add_argument("--variants", default="naive,pronlora", help=f"of {', '.join(VARIANTS)}")
    ap.add_argument("--set", action="append", default=[], help="config override key=value")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    ap.add_argument("--tag", default="", help="suffix for the results file names")
    ap.add_argument("--render", help="re-render the markdown of an existing results JSON")
    args = ap.parse_args()
    if args.render:
        path = Path(args.render)
        write_text(path.with_suffix(".md"), markdown(json.loads(path.read_text())))
        return 0
    if not args.model:
        raise ConfigError("--model is required (unless --render)")
    what = set(args.what.split(","))
    if not what <= {"train", "infer"}:
        raise ConfigError(f"--what: {args.what!r}; expected train and/or infer")
    model = Path(args.model).resolve()
    if args.make_checkpoint and not (model / "config.json").is_file():
        from pronlora.devtools.random_checkpoint import make_random_checkpoint

        make_random_checkpoint("full", model)
    work = Path(tempfile.mkdtemp(prefix="pronlora-bench-"))
    prepared = make_bench_data(
        work / "prepared", REPO / "bench" / "mini_durations.json", args.utterances
    )
    runs = []
    for name in args.config.split(","):
        for quant in args.quantization.split(","):
            for variant in args.variants.split(","):
                if variant not in VARIANTS:
                    raise ConfigError(f"--variants: unknown {variant!r}; known {list(VARIANTS)}")
                overrides = [f"quantization={quant}", *VARIANTS[variant][quant], *args.set]
                cfg = load_config(name, overrides)
                setup = f"{name} {quant} {variant}"
                entry = {"setup": setup, "config": name, "variant": variant, "overrides": overrides}
                for stage, fn in (("train", _train), ("infer", _infer)):
                    if stage not in what:
                        continue
                    try:
                        entry[stage] = fn(cfg, model, prepared, work / "runs" / setup, args)
                    except Exception as exc:  # record it: one failure must not void the rest
                        traceback.print_exc()
                        entry[stage] = {"error": f"{type(exc).__name__}: {exc}"}
                    print(setup, stage, json.dumps(entry[stage]), flush=True)
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                runs.append(entry)
    results = {**results_header(), "runs": runs}
    write_results(results, Path(args.out), args.tag, markdown(results))
    shutil.rmtree(work, ignore_errors=True)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    run_job(main, (ConfigError,))
