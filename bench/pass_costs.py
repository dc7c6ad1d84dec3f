#!/usr/bin/env python3
"""What one training pass costs, and how much of it is the frozen audio path (one GPU).

For passes of bench instances (default: 16 APA, 16 MDD, 32 MDD; the default pass is two
micro-batches of 8): forward + backward through the label-only loss as the Trainer runs it,
the same pass with the audio embeddings handed in precomputed (``inputs_embeds``), and the
audio path alone. The gap between the first two bounds what caching the embeddings of a frozen
audio encoder could save. MDD passes of 16 and 32 against the APA one show the fixed cost of a
pass, which joining short micro-batches into fewer passes could save.
  python bench/pass_costs.py --model /tmp/full [--config paper_r64] [key=value ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from pronlora.core.config import load_config
from pronlora.core.layout import PreparedDir
from pronlora.devtools.bench import make_bench_data
from pronlora.model.collate import Collator
from pronlora.model.load import load_model
from pronlora.train.loss import label_only_loss

AUDIO = ("audio_input_features", "audio_embed_sizes", "audio_attention_mask")
REPO = Path(__file__).resolve().parents[1]


def mean_ms(fn: Callable[[], None], reps: int = 8, warmup: int = 3) -> float:
    for _ in range(warmup):  # the first call compiles the decoder layers
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--config", default="paper_r64")
    ap.add_argument("--passes", default="APA:16,MDD:16,MDD:32", help="task:instances,...")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    cfg = load_config(args.config, args.overrides)
    loaded = load_model(cfg, args.model)
    model = loaded.model if cfg.quantization == "nf4" else loaded.model.to("cuda")
    model.train()
    inner = model.base_model.model.model  # PeftModel -> CausalLM -> the multimodal model
    work = Path(tempfile.mkdtemp(prefix="pronlora-pass-costs-"))
    passes = [(t, int(n)) for t, n in (p.split(":") for p in args.passes.split(","))]
    durations = REPO / "bench" / "mini_durations.json"
    prepared = make_bench_data(work, durations, max(n for _, n in passes))
    rows = PreparedDir(prepared).load_split("train")
    collate = Collator(
        loaded.tokenizer, loaded.feature_extractor, pad_to_multiple_of=cfg.pad_to_multiple_of
    )
    autocast = torch.autocast("cuda", torch.bfloat16)
    for task, n in passes:
        picked = [r for r in rows if r["task"] == task][:n]
        batch = {k: v.to("cuda") for k, v in collate(picked).items()}

        def audio_path(b=batch) -> torch.Tensor:
            with torch.no_grad(), autocast:
                embeds = inner.embed_tokens(b["input_ids"])
                return inner.embed_tokens_extend(b["input_ids"], embeds, **{k: b[k] for k in AUDIO})

        given = {
            "inputs_embeds": audio_path(),
            "attention_mask": batch["attention_mask"],
            "labels": batch["labels"],
        }

        def train_pass(b: dict) -> None:
            with autocast:
                loss, n = label_only_loss(model, b)
            (loss / n).backward()

        full = mean_ms(lambda b=batch: train_pass(b))
        precomputed = mean_ms(lambda b=given: train_pass(b))
        alone = mean_ms(audio_path)
        print(
            f"{cfg.name} {cfg.quantization} {task} pass of {len(picked)} "
            f"({int(batch['attention_mask'].sum())} tokens, width {batch['input_ids'].shape[1]}): "
            f"{full:.1f} ms; audio embeddings given: {precomputed:.1f} ms; "
            f"audio path alone: {alone:.1f} ms",
            flush=True,
        )


if __name__ == "__main__":
    main()
