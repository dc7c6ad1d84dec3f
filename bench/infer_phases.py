#!/usr/bin/env python3
"""Where a decode's GPU time goes: the prompt's forward (prefill) against the decoding steps,
per task, for the inference stage as it runs (``run_shard``, answers forced to their targets'
token counts as in ``bench_profile``). Needs a GPU.

  python bench/infer_phases.py --model /tmp/full --utterances 512 [--set infer.compile_prefill=true]

Two passes on one load (the first warms up); the second is reported. Per task: prefill seconds,
prompt tokens and the TFLOP/s they ran at (2 x the language model's linear weights per token),
decoding steps, their seconds and milliseconds per step, and the key/value bytes a step reads
at its mean window (what bounds a step at large batches). Prints one JSON line and a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from pronlora.core.cli import run_job
from pronlora.core.config import load_config
from pronlora.devtools.bench import decode_test_split, make_bench_data, target_lengths
from pronlora.devtools.profile import language_model_linear_params
from pronlora.infer import generation
from pronlora.infer.models import Models
from pronlora.model import prefill as prefill_module
from pronlora.model.cache_window import window
from pronlora.model.load import load_tokenizer

log = logging.getLogger("infer_phases")
REPO = Path(__file__).resolve().parents[1]


class _WallEvent:
    """torch.cuda.Event's timing interface on the host clock (a CPU run checks the script)."""

    def __init__(self, enable_timing: bool = True) -> None:
        self.t = 0.0

    def record(self) -> None:
        self.t = time.perf_counter()

    def elapsed_time(self, end: _WallEvent) -> float:
        return (end.t - self.t) * 1e3


def _event() -> Any:
    return torch.cuda.Event(enable_timing=True) if torch.cuda.is_available() else _WallEvent()


class Phases:
    """CUDA events around each decode batch and its prefill, read after the pass."""

    def __init__(self) -> None:
        self.batches: list[dict[str, Any]] = []
        self._prefill: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    def install(self) -> None:
        decode, active = generation.greedy_decode, prefill_module.Prefill.active
        phases = self

        def timed_decode(model, inputs, max_new_tokens, stop_ids, pad_id, *a, **kw):
            start, end = _event(), _event()
            start.record()
            answer = decode(model, inputs, max_new_tokens, stop_ids, pad_id, *a, **kw)
            end.record()
            mask = inputs["attention_mask"]
            written = (answer != pad_id).any(0).nonzero()
            steps = int(written.max()) + 1 if written.numel() else 1
            phases.batches.append(
                {
                    "limit": max_new_tokens,
                    "rows": mask.shape[0],
                    "prompt": mask.shape[1],
                    "prompt_tokens": int(mask.sum()),
                    "steps": steps,
                    "events": (start, end, phases._prefill.pop()),
                }
            )
            return answer

        @contextmanager
        def timed_active(self_, cache, batch):
            start, end = _event(), _event()
            start.record()
            with active(self_, cache, batch):
                yield
            end.record()
            phases._prefill.append((start, end))

        generation.greedy_decode = timed_decode
        prefill_module.Prefill.active = timed_active

    def read(self) -> list[dict[str, Any]]:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        out = []
        for b in self.batches:
            start, end, (p0, p1) = b.pop("events")
            total, pre = start.elapsed_time(end) / 1e3, p0.elapsed_time(p1) / 1e3
            out.append({**b, "total_s": total, "prefill_s": pre, "steps_s": total - pre})
        self.batches = []
        return out


def summarize(batches: list[dict[str, Any]], mdd_limit: int, linear: int, kv_bytes: int):
    """Per task sums; ``linear``: the LM's linear weights (prefill FLOPs 2 x per token)."""
    by: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for b in batches:
        t = by["MDD" if b["limit"] >= mdd_limit else "APA"]
        t["batches"] += 1
        t["rows"] += b["rows"]
        t["prefill_s"] += b["prefill_s"]
        t["steps_s"] += b["steps_s"]
        t["padded_prompt_tokens"] += b["rows"] * b["prompt"]
        t["prompt_tokens"] += b["prompt_tokens"]
        t["steps"] += b["steps"] - 1  # step 0 is the prefill's token
        size = b["prompt"] + b["limit"] - 1
        for i in range(1, b["steps"]):
            t["kv_gb_read"] += b["rows"] * window(b["prompt"] + i, size) * kv_bytes / 1e9
    out = {}
    for task, t in by.items():
        steps = max(t["steps"], 1)
        out[task] = {
            **{k: round(v, 3) for k, v in t.items()},
            "prefill_tflops": round(2 * linear * t["padded_prompt_tokens"] / t["prefill_s"] / 1e12),
            "ms_per_step": round(1e3 * t["steps_s"] / steps, 2),
            "kv_gb_per_step": round(t["kv_gb_read"] / steps, 2),
            "kv_tb_per_s": round(t["kv_gb_read"] / 1e3 / max(t["steps_s"], 1e-9), 2),
        }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--config", default="paper_r64")
    ap.add_argument("--utterances", type=int, default=512)
    ap.add_argument("--set", action="append", default=[], help="config override key=value")
    ap.add_argument("--work", help="dir for the bench data and decodes (default: a temp dir)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        log.warning("no GPU: host times (a check of the script, not a measurement)")
    cfg = load_config(args.config, args.set)
    model = Path(args.model).resolve()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="pronlora-phases-"))
    prepared = make_bench_data(
        work / "test-set", REPO / "bench" / "mini_durations.json", args.utterances
    )
    from pronlora.core.layout import PreparedDir

    rows = PreparedDir(prepared).load_split("test")
    lengths = target_lengths(rows, load_tokenizer(model))
    phases = Phases()
    phases.install()
    models = Models()
    result: dict[str, Any] = {"config": args.config, "overrides": args.set, "instances": len(rows)}
    for name in ("first", "second"):
        t0 = time.perf_counter()
        summary = decode_test_split(cfg, model, prepared, work / name, models, lengths)
        wall = time.perf_counter() - t0
        batches = phases.read()
        result[name] = {"wall_s": round(wall, 2), "seconds": summary["seconds"]}
    assert models.loaded is not None
    lm = models.loaded.model
    linear = language_model_linear_params(lm)
    text = lm.config.get_text_config(decoder=True)
    heads, layers = text.num_key_value_heads, text.num_hidden_layers
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv_bytes = 2 * heads * head_dim * 2 * layers  # K and V, bf16, every layer
    tasks = summarize(batches, cfg.infer.max_new_tokens_mdd, linear, kv_bytes)
    second = result["second"]
    gpu = sum(t["prefill_s"] + t["steps_s"] for t in tasks.values())
    result.update(
        tasks=tasks,
        decode_gpu_s=round(gpu, 2),
        outside_decode_s=round(second["seconds"] - gpu, 2),
        instances_per_s=round(len(rows) / second["seconds"], 2),
        device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        peak_gb=round(
            (torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0) / 2**30, 2
        ),
    )
    print(json.dumps(result))
    print(
        "| task | batches | prefill s | prompt tok (padded) | prefill TFLOP/s | steps | "
        "steps s | ms/step | KV GB/step | KV TB/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for task, t in sorted(tasks.items()):
        print(
            f"| {task} | {t['batches']:.0f} | {t['prefill_s']:.2f} | "
            f"{t['padded_prompt_tokens']:.0f} | {t['prefill_tflops']} | {t['steps']:.0f} | "
            f"{t['steps_s']:.2f} | {t['ms_per_step']} | {t['kv_gb_per_step']} | "
            f"{t['kv_tb_per_s']} |"
        )
    print(
        f"pass {second['seconds']} s, decode GPU {gpu:.2f} s, outside decode "
        f"{second['seconds'] - gpu:.2f} s, {result['instances_per_s']} inst/s"
    )
    return 0


if __name__ == "__main__":
    run_job(main, ())
