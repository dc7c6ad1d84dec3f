#!/usr/bin/env python3
"""Profile a few training steps of a config: top CUDA kernels and achieved TFLOP/s.

Answers "what bounds the step" for the performance table. Usage (GPU):
  python bench/profile_step.py --model /tmp/full --config paper_r64 [--task APA] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from pronlora.config import load_config
from pronlora.devtools.bench import make_bench_data
from pronlora.layout import PreparedDir
from pronlora.model.load import load_model
from pronlora.trainer import build_trainer

REPO = Path(__file__).resolve().parents[1]


def matmul_ceiling_tflops() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 10 * 2 * 8192**3 / (time.perf_counter() - t) / 1e12


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--config", default="paper_r64")
    ap.add_argument("--task", default="APA")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp())
    prepared = make_bench_data(work / "p", REPO / "bench" / "mini_durations.json", 64)
    rows = [r for r in PreparedDir(prepared).load_split("train") if r["task"] == args.task]
    cfg = load_config(args.config, args.overrides)
    cfg = replace(
        cfg, grad_accum=1, max_steps=3 + args.steps, save_steps=10**6, logging_steps=10**6
    )
    loaded = load_model(cfg, Path(args.model))
    trainer = build_trainer(cfg, loaded, rows, work / "run")
    from transformers import TrainerCallback

    prof = torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CUDA, torch.profiler.ProfilerActivity.CPU]
    )

    class Window(TrainerCallback):
        def on_step_begin(self, a, state, c, **kw):
            if state.global_step == 3:
                torch.cuda.synchronize()
                prof.start()
                self.t = time.perf_counter()
                self.tok = trainer.tokens_total

        def on_train_end(self, a, state, c, **kw):
            torch.cuda.synchronize()
            prof.stop()
            self.dt = time.perf_counter() - self.t

    w = Window()
    trainer.add_callback(w)
    trainer.train()
    tokens = trainer.tokens_total - w.tok
    # Frozen base: forward 2N, backward for activations 2N FLOP per token (N = LM params).
    n_lm = 3.8e9
    achieved = 4 * n_lm * tokens / w.dt / 1e12
    print(
        json.dumps(
            {
                "config": args.config,
                "task": args.task,
                "overrides": args.overrides,
                "steps": args.steps,
                "seconds": round(w.dt, 3),
                "tokens": tokens,
                "tokens_per_s": round(tokens / w.dt),
                "achieved_tflops_est": round(achieved),
                "matmul_ceiling_tflops": round(matmul_ceiling_tflops()),
            }
        )
    )
    print(
        prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60)
    )


if __name__ == "__main__":
    main()
