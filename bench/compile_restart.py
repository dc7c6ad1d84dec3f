#!/usr/bin/env python3
"""What a job with a warm compile cache still pays before its first step, with Python floats
as graph constants (``model/load.py``'s setting) and without (Dynamo then restarts its analysis
of the compiled layer in every job, and the discarded attempt misses the AOTAutograd cache).

Each row is a fresh process (a job of a grid): load, then one compiled forward + backward
through the label-only loss, timed; a cold job fills the cache of its setting, a warm one reads
it. Runs on a CPU with the tiny model unless --model names a snapshot.
  python bench/compile_restart.py [--model DIR] [--config smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ONE_JOB = """
import json, sys, time
from pathlib import Path
import torch
from torch._dynamo.utils import compile_times, counters
from pronlora.core.atomic import read_jsonl
from pronlora.core.config import load_config
from pronlora.model.collate import Collator
from pronlora.model.load import load_model
from pronlora.train.loss import label_only_loss

model, prepared, config, floats_constant = sys.argv[1:5]
loaded = load_model(load_config(config, ["compile_layers=true"]), Path(model))
torch._dynamo.config.specialize_float = floats_constant == "1"  # read when the layer is traced
rows = read_jsonl(Path(prepared) / "train.jsonl")[:2]
batch = Collator(loaded.tokenizer, loaded.feature_extractor)(rows)
dev = next(loaded.model.parameters()).device
batch = {k: v.to(dev) if torch.is_tensor(v) else v for k, v in batch.items()}
t0 = time.perf_counter()
loss = label_only_loss(loaded.model, batch)[0]
loss.backward()
seconds = time.perf_counter() - t0
times = compile_times(repr="str", aggregate=True)
attempts = [x for x in times.splitlines() if x.startswith("compile_attempt_")]
aot = counters["aot_autograd"]
print(json.dumps({"first_step_s": round(seconds, 2), "loss": loss.item(),
                  "trace_attempts": len(attempts),
                  "aot_cache_hits": aot["autograd_cache_hit"],
                  "aot_cache_misses": aot["autograd_cache_miss"]}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", help="snapshot dir (default: a tiny random one, built here)")
    ap.add_argument("--config", default="smoke")
    args = ap.parse_args()
    from pronlora.data.prep import prepare
    from pronlora.devtools.random_checkpoint import make_random_checkpoint
    from pronlora.devtools.synthetic_corpus import make_demo_corpus

    work = Path(tempfile.mkdtemp(prefix="pronlora-compile-"))
    model = Path(args.model) if args.model else make_random_checkpoint("tiny", work / "tiny")
    corpus = make_demo_corpus(work / "corpus", utterances=12, seed=1)
    prepared = prepare("kaldi", corpus, work / "prepared").out
    print(
        "| Python floats | job | first step (s) | loss | Dynamo analysis attempts "
        "| AOT hits / misses |"
    )
    print("|---|---|---|---|---|---|")
    for constant in ("0", "1"):
        env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
        env["PRONLORA_CACHE"] = str(work / f"cache-{constant}")
        for job in ("cold", "warm"):
            argv = [sys.executable, "-c", ONE_JOB, str(model), str(prepared), args.config, constant]
            proc = subprocess.run(argv, capture_output=True, text=True, env=env)
            if proc.returncode:
                sys.exit(f"{job} job failed:\n{proc.stderr[-3000:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            print(
                f"| {'constants' if constant == '1' else 'symbols'} | {job} | {r['first_step_s']} "
                f"| {r['loss']:.4f} | {r['trace_attempts']} "
                f"| {r['aot_cache_hits']} / {r['aot_cache_misses']} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
