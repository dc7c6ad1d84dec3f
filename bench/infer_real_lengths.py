#!/usr/bin/env python3
"""A decode job as ``jobs/infer.py --shard 0`` runs it, every answer forced to its target's
token count (random weights never stop by themselves, and a barely trained model's answers run
to ``max_new_tokens``): the time a trained checkpoint's decode of these instances would take.

  python bench/infer_real_lengths.py --run-dir R --checkpoint base,epoch-1 --prepared P

Several checkpoints decode in one process as a worker of jobs/infer.py does (one load, each
next checkpoint swapped in). Writes each shard and its done.json where jobs/infer.py would
(``bench/rates.py record`` reads them); prints the summaries.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pronlora.core.cli import run_job
from pronlora.core.config import ConfigError
from pronlora.core.layout import PreparedDir, RunDir
from pronlora.devtools.bench import target_lengths
from pronlora.infer.models import Models, ensure_run
from pronlora.infer.shard_file import shard_paths
from pronlora.infer.stage import run_shard


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--prepared", required=True)
    args = ap.parse_args()
    checkpoints = [c.strip() for c in args.checkpoint.split(",") if c.strip()]
    for c in checkpoints:
        out, _ = shard_paths(Path(args.run_dir), c, 0, 1, "test")
        if out.exists():
            # run_shard would resume it, or return the earlier decode's summary as this one's
            raise ConfigError(f"{out} exists: a timing needs a decode of its own; move it away")
    spec = ensure_run(Path(args.run_dir), None, None)
    rows = PreparedDir(Path(args.prepared)).load_split("test")
    # the stage's own load, whose tokenizer counts the targets' tokens (no second load)
    models = Models(swap=len(checkpoints) > 1)
    loaded = models.get(spec, RunDir(Path(args.run_dir)).complete_checkpoint(checkpoints[0]))
    lengths = target_lengths(rows, loaded.tokenizer)
    for c in checkpoints:
        summary = run_shard(
            Path(args.run_dir),
            c,
            Path(args.prepared),
            "test",
            decode_lengths=lengths,
            other_data=True,
            models=models,
        )
        summary["answer_tokens_mean"] = round(sum(lengths.values()) / len(lengths), 1)
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    run_job(main, ())
