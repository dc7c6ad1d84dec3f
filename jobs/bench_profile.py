#!/usr/bin/env python3
"""Profile training steps and the inference stage of named config variants: what bounds them
(see devtools/profile.py).

Writes bench/results/<gpu>-<date>-profile<tag>.json and .md, rewritten after every variant so
a run cut short keeps what it measured. Example (one H100):
  python jobs/bench_profile.py --model /tmp/full --config paper_r64 --quantization bf16 \
      --variants naive,pronlora --what train,infer
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
from pronlora.core.config import ConfigError, load_config
from pronlora.core.layout import PreparedDir
from pronlora.devtools.bench import VARIANTS, make_bench_data, results_header, write_results
from pronlora.devtools.profile import markdown, profile_inference, profile_training

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True, help="snapshot dir")
    ap.add_argument("--config", default="paper_r64")
    ap.add_argument("--quantization", default="bf16")
    ap.add_argument("--variants", default="pronlora,compile", help=f"of {', '.join(VARIANTS)}")
    ap.add_argument("--warmup", type=int, default=2, help="optimizer steps before timing")
    ap.add_argument("--steps", type=int, default=2, help="steps timed, then as many profiled")
    ap.add_argument("--what", default="train", help="train and/or infer")
    ap.add_argument(
        "--utterances", type=int, default=160, help="bench clips of the inference test split"
    )
    ap.add_argument("--set", action="append", default=[], help="config override key=value")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    what = set(args.what.split(","))
    if not what <= {"train", "infer"}:
        raise ConfigError(f"--what: {args.what!r}; expected train and/or infer")
    if not torch.cuda.is_available():
        raise ConfigError("bench_profile needs a GPU (CUDA kernel times)")
    model = Path(args.model).resolve()
    plans = []
    for quant in args.quantization.split(","):
        for variant in args.variants.split(","):
            if variant not in VARIANTS:
                raise ConfigError(f"--variants: unknown {variant!r}; known {list(VARIANTS)}")
            overrides = [f"quantization={quant}", *VARIANTS[variant][quant], *args.set]
            plans.append((f"{args.config} {quant} {variant}", overrides))
    cfgs = [load_config(args.config, o) for _, o in plans]  # all validated before any load
    work = Path(tempfile.mkdtemp(prefix="pronlora-profile-"))
    # the run takes one step after the profiled ones (profile_training) and its data one more:
    # neither the end-of-run save nor an epoch end falls inside the windows
    n_rows = max(c.effective_batch for c in cfgs) * (args.warmup + 2 * args.steps + 2)
    durations = REPO / "bench" / "mini_durations.json"
    prepared = make_bench_data(work / "prepared", durations, (n_rows + 1) // 2)
    rows = PreparedDir(prepared).load_split("train")
    test_set = make_bench_data(work / "test-set", durations, args.utterances)
    results = {**results_header(), "warmup": args.warmup, "steps": args.steps, "runs": []}

    def train(cfg, run_dir):
        return profile_training(cfg, model, rows, run_dir, args.warmup, args.steps)

    def infer(cfg, run_dir):
        return profile_inference(cfg, model, test_set, run_dir)

    stages = [("train", "profile", train), ("infer", "infer", infer)]  # --what, results key
    first_answers: dict[str, str] | None = None  # the first setup's, which the others meet
    for (setup, overrides), cfg in zip(plans, cfgs, strict=True):
        entry = {"setup": setup, "overrides": overrides}
        for name, stage, fn in stages:
            if name not in what:
                continue
            run_dir = work / "runs" / f"{setup.replace(' ', '-')}-{stage}"
            run_dir.mkdir(parents=True)
            try:
                entry[stage] = fn(cfg, run_dir)
            except Exception as exc:  # record it: one failure must not void the rest
                traceback.print_exc()
                entry[stage] = {"error": f"{type(exc).__name__}: {exc}"[-2000:]}
            answers = entry[stage].pop("_answers", None)
            if answers is not None:
                first_answers = first_answers or answers
                entry[stage]["answers_unlike_first_setup"] = sum(
                    first_answers.get(k) != v for k, v in answers.items()
                )
            print(setup, stage, json.dumps(entry[stage]), flush=True)
            torch.cuda.empty_cache()
        results["runs"].append(entry)
        write_results(results, Path(args.out), f"-profile{args.tag}", markdown(results))
    shutil.rmtree(work, ignore_errors=True)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    run_job(main, (ConfigError,))
