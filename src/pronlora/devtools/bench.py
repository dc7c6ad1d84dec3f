"""Training and inference benchmarks on realistic inputs (issue: performance on one GPU).

Inputs follow the real length distribution: clip durations drawn from the SpeechOcean762 mini
set (``bench/mini_durations.json``), the paper's prompts, answers of realistic length. Each
setup runs the project's own code path (``build_trainer`` for training, ``generate`` for
inference); projections scale the measured rates to the paper's workload: 3 epochs of
2,500 APA + 2,500 MDD training instances and 2,500 + 2,500 test generations.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import re
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from pronlora.core.atomic import read_jsonl, write_json, write_jsonl, write_text
from pronlora.core.config import TrainConfig
from pronlora.core.layout import PreparedDir, RunDir
from pronlora.core.phones import CMU_PHONES
from pronlora.core.protocol import (
    SAMPLE_RATE,
    TASKS,
    Task,
    format_apa_answer,
    format_mdd_answer,
    user_content,
)
from pronlora.core.versions import versions

log = logging.getLogger(__name__)

# The naive HF + PEFT path of paper-protocol.md's anchor measurement: full-vocabulary logits,
# random mixing of APA/MDD rows, no padding buckets, PEFT's k-bit preparation and gradient
# checkpointing for QLoRA, eager layers and one micro-batch per pass, transformers' sdpa, the
# audio embedded in every pass; for generation the unmerged adapter, a growing cache and
# batches of 64 (nf4: 32).
_NAIVE_BOTH = [
    "compile_layers=false",
    "micro_batches_per_pass=1",
    "attn_implementation=sdpa",
    "cache_audio_embeddings=false",
    "lora_input_cast=true",
    "label_only_loss=false",
    "group_by_length=false",
    "pad_to_multiple_of=0",
    "infer.merge_adapter=false",
    "infer.cache=dynamic",
]
NAIVE_OVERRIDES = {
    "bf16": [*_NAIVE_BOTH, "gradient_checkpointing=false", "infer.batch_size=64"],
    "nf4": [
        *_NAIVE_BOTH,
        "gradient_checkpointing=true",
        "kbit_prepare=true",
        "infer.batch_size=32",
    ],
}


def _both(*overrides: str) -> dict[str, list[str]]:
    """The same overrides under bf16 and nf4."""
    return {q: list(overrides) for q in ("bf16", "nf4")}


# Each variant's overrides on top of the named config (which holds the fast defaults).
VARIANTS: dict[str, dict[str, list[str]]] = {
    "naive": NAIVE_OVERRIDES,
    "pronlora": _both(),
    # transformers' sdpa (key/value copies under a padding mask) instead of the folded one.
    "sdpa": _both("attn_implementation=sdpa"),
    # Training: the frozen audio path run in every pass instead of once per clip.
    "audio-every-pass": _both("cache_audio_embeddings=false"),
    # Generation: the earlier defaults (dynamic cache, batches of 128); compiled decoding steps.
    "dynamic-128": _both("infer.cache=dynamic", "infer.batch_size=128"),
    "static-cache": _both("infer.cache=static"),
    # Generation: each decoding step one CUDA graph replay (model/greedy.py).
    "graphs": _both("infer.cache=static_graphs"),
    # ... with the LoRA beside each layer (nf4's only way before model/dequantized_merge.py).
    "graphs-unmerged": _both("infer.cache=static_graphs", "infer.merge_adapter=false"),
    # ... and the prompt's forward through compiled decoder layers (model/prefill.py).
    "compiled-prefill": _both("infer.cache=static_graphs", "infer.compile_prefill=true"),
    # Regional torch.compile of the decoder layers (config key compile_layers; on in paper_r64).
    "eager": _both("compile_layers=false"),
    "compile": _both("compile_layers=true"),
    # Two or four of the recipe's micro-batches per forward/backward pass: the same optimizer
    # steps and loss (config key micro_batches_per_pass).
    "compile-pass2": _both("compile_layers=true", "micro_batches_per_pass=2"),
    "compile-pass4": _both("compile_layers=true", "micro_batches_per_pass=4"),
}

PAPER_TRAIN_PER_TASK = 2500
PAPER_TEST_PER_TASK = 2500
PAPER_EPOCHS = 3
PHONES_PER_S = 4.1  # 2,907 canonical phones in 707.7 s of the mini set
PHONES_PER_WORD = 3.2


def make_bench_data(out: Path, durations_file: Path, n_utts: int, seed: int = 0) -> Path:
    """A prepared dir (train.jsonl = test.jsonl) of noise clips with real-length prompts/answers."""
    rng = random.Random(seed)
    durations = json.loads(durations_file.read_text())["durations_s"]
    phones = sorted(CMU_PHONES)
    rows = []
    for i in range(n_utts):
        dur = rng.choice(durations)
        utt = f"bench{i:05d}"
        wav = out / "audio" / f"{utt}.wav"
        wav.parent.mkdir(parents=True, exist_ok=True)
        noise = np.random.default_rng(seed + i).normal(0, 0.05, int(dur * SAMPLE_RATE))
        sf.write(str(wav), noise.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
        n_ph = max(2, round(dur * PHONES_PER_S))
        seq = [rng.choice(phones) for _ in range(n_ph)]
        words = " ".join("WORD" for _ in range(max(1, round(n_ph / PHONES_PER_WORD))))
        targets = {
            Task.APA: format_apa_answer(
                {k: rng.randint(3, 10) for k in ("accuracy", "fluency", "prosodic", "total")}
            ),
            Task.MDD: format_mdd_answer(words, " ".join(seq)),
        }
        for task in TASKS:
            rows.append(
                {
                    "id": f"{utt}-{task.value}",
                    "utt_id": utt,
                    "task": task.value,
                    "split": "test",
                    "audio": str(wav.resolve()),
                    "duration_s": dur,
                    "prompt": user_content(task),
                    "target": targets[task],
                }
            )
    prepared = PreparedDir(out)
    write_jsonl(prepared.split_path("train"), rows)
    write_jsonl(prepared.split_path("test"), rows)
    write_json(prepared.manifest_path, {"bench": True, **prepared.content_record()})
    return out


def results_header() -> dict[str, Any]:
    """What every results file starts with: the device, the date, versions, the command."""
    return {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "date": dt.date.today().isoformat(),
        "versions": versions(),
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
    }


def results_heading(title: str, results: dict[str, Any]) -> list[str]:
    """The first lines of every results file: what was measured, where, when, by which command."""
    return [
        f"# {title}: {results['device']} ({results['date']})",
        "",
        f"Command: `{results['command']}`",
        "",
    ]


def write_results(results: dict[str, Any], out: Path, suffix: str, md: str) -> Path:
    """``<device>-<date><suffix>.json`` and ``.md`` under ``out``; returns the JSON path."""
    device = re.sub(r"[^A-Za-z0-9]+", "-", results["device"]).strip("-").lower()
    stem = f"{device}-{results['date']}{suffix}"
    write_json(out / f"{stem}.json", results)
    write_text(out / f"{stem}.md", md)
    return out / f"{stem}.json"


def _peak_gb() -> float:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else 0.0


def _step_timer(trainer: Any) -> Any:
    """Callback recording each optimizer step's wall time and the trainer's token count."""
    from transformers import TrainerCallback

    def sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.tokens: list[int] = []
            self.t0 = 0.0

        def on_step_begin(self, args, state, control, **kw):
            sync()
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            sync()
            self.times.append(time.perf_counter() - self.t0)
            self.tokens.append(trainer.tokens_total)

    return StepTimer()


def bench_train(
    cfg: TrainConfig, model_dir: Path, prepared: Path, run_dir: Path, steps: int, warmup: int = 3
) -> dict[str, Any]:
    """Per-task optimizer steps of one forward/backward pass each (``micro_batch`` x
    ``micro_batches_per_pass`` instances)."""
    from pronlora.model.load import load_model
    from pronlora.train.trainer import build_trainer

    rows_all = PreparedDir(prepared).load_split("train")
    per_pass = cfg.micro_batch * cfg.micro_batches_per_pass
    cfg = replace(
        cfg,
        grad_accum=cfg.micro_batches_per_pass,
        max_steps=warmup + steps,
        save_steps=10**6,
        logging_steps=10**6,
        dataloader_workers=2,
    )
    loaded = load_model(cfg, model_dir)  # its LoRA seeded from cfg.seed
    result: dict[str, Any] = {
        "trainable_params": sum(p.numel() for p in loaded.model.parameters() if p.requires_grad)
    }
    phases = [(t.value, [r for r in rows_all if r["task"] == t.value]) for t in TASKS]
    phases.append(("mixed", rows_all))
    for phase, rows in phases:
        run = run_dir / phase
        run.mkdir(parents=True, exist_ok=True)
        steps_here = steps if phase != "mixed" else 2 * steps
        trainer = build_trainer(replace(cfg, max_steps=warmup + steps_here), loaded, rows, run)
        timer = _step_timer(trainer)
        trainer.add_callback(timer)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
        times, tokens = timer.times, timer.tokens
        timed = times[warmup:]
        step_s = sum(timed) / len(timed)
        tok_per_step = (tokens[-1] - tokens[warmup - 1]) / len(timed)
        result[phase] = {
            "step_s": round(step_s, 4),
            "tokens_per_step": round(tok_per_step, 1),
            "tokens_per_instance": round(tok_per_step / per_pass, 1),
            "tokens_per_s": round(tok_per_step / step_s, 1),
            "peak_gb": _peak_gb(),
        }
    # Projection from the mixed phase: the run's real sampler over APA+MDD rows.
    per_instance = result["mixed"]["step_s"] / per_pass
    result["projected_3_epochs_min"] = round(
        PAPER_EPOCHS * 2 * PAPER_TRAIN_PER_TASK * per_instance / 60, 2
    )
    result["peak_gb"] = max(result[p]["peak_gb"] for p, _ in phases)
    del loaded
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def target_lengths(rows: list[dict[str, Any]], tokenizer: Any) -> dict[str, int]:
    """Answer tokens per instance id: the real target's length under the real tokenizer."""
    return {r["id"]: len(tokenizer.encode(r["target"], add_special_tokens=False)) for r in rows}


def decode_test_split(
    cfg: TrainConfig,
    model_dir: Path,
    prepared: Path,
    run_dir: Path,
    models: Any,
    lengths: dict[str, int],
) -> dict[str, Any]:
    """One pass of the inference stage (``run_shard``) over the base model and the test split,
    each instance decoding ``lengths[id]`` tokens; its summary."""
    from pronlora.infer.stage import run_shard

    return run_shard(
        run_dir,
        "base",
        prepared,
        "test",
        config=cfg,
        model=str(model_dir),
        models=models,
        decode_lengths=lengths,
    )


def bench_infer(
    cfg: TrainConfig, model_dir: Path, prepared: Path, run_dir: Path, models: Any = None
) -> dict[str, Any]:
    """The inference stage itself (``run_shard``: batching, prefetching, generation, the shard
    writer) over the bench's test split, every instance decoding exactly its real target's
    tokens plus ``<|end|>`` (random weights never stop by themselves).

    Two passes in one process with one model load: the first pays the one-off warm-up
    (static-cache compilation, allocator), the second gives the steady rate. ``models``: a
    caller's holder, to decode more passes with the same load (the profile does).
    """
    from pronlora.infer.models import Models
    from pronlora.model.load import load_tokenizer

    rows = PreparedDir(prepared).load_split("test")
    lengths = target_lengths(rows, load_tokenizer(model_dir))
    own_models = models is None
    models = Models() if own_models else models
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    passes = []
    for name in ("first", "second"):
        t0 = time.perf_counter()
        summary = decode_test_split(cfg, model_dir, prepared, run_dir / name, models, lengths)
        passes.append({"wall_s": round(time.perf_counter() - t0, 2), **summary})
    first, second = passes
    outputs = read_jsonl(RunDir(run_dir / "second").shard("base", 0, 1, "test")[0])
    n = len(rows)
    rate = n / second["seconds"]
    warmup = max(0.0, first["seconds"] - second["seconds"])
    result: dict[str, Any] = {
        "batch_size": cfg.infer.batch_size,
        "cache": cfg.infer.cache,
        "instances": n,
        "answer_tokens_mean": round(sum(lengths.values()) / n, 1),
        "answer_chars_mean": round(sum(len(o["output"]) for o in outputs) / n, 1),
        "load_s": round(first["wall_s"] - first["seconds"], 1),
        "first_pass_s": first["seconds"],
        "steady_pass_s": second["seconds"],
        "warmup_s": round(warmup, 1),
        "instances_per_s": round(rate, 2),
        "generated_tokens_per_s": second["tokens_per_s"],
        # the paper's test set through one worker: one load, the warm-up, the steady rate
        "projected_test_set_s": round(warmup + 2 * PAPER_TEST_PER_TASK / rate, 1),
        "loads": models.loads,
        "peak_gb": _peak_gb(),
        # id -> answer, for comparing variants (bench_profile pops it before writing results)
        "_answers": {o["id"]: o["output"] for o in outputs},
    }
    if own_models:
        del models
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return result


def _failed_row(r: dict[str, Any], stage: str, columns: int) -> str:
    return f"| {r['setup']} | failed: {r[stage]['error'][:80]} |" + " |" * (columns - 2)


def _train_row(r: dict[str, Any]) -> str:
    t = r["train"]
    if "error" in t:
        return _failed_row(r, "train", 7)
    return (
        f"| {r['setup']} | {t['APA']['tokens_per_s']:,.0f} | {t['MDD']['tokens_per_s']:,.0f} | "
        f"{t['mixed']['tokens_per_s']:,.0f} | {t['mixed']['step_s']} | {t['peak_gb']} | "
        f"{t['projected_3_epochs_min']} |"
    )


def _infer_row(r: dict[str, Any]) -> str:
    t = r["infer"]
    if "error" in t:
        return _failed_row(r, "infer", 9)
    if "cache" not in t:  # results of the earlier per-task generate() benchmark
        rate = f"APA {t['APA']['instances_per_s']} / MDD {t['MDD']['instances_per_s']}"
        tail = f"{t['peak_gb']} | {t['projected_test_set_s']} |"
        return f"| {r['setup']} | {t['batch_size']} | - | {rate} | capped | - | - | {tail}"
    return (
        f"| {r['setup']} | {t['batch_size']} | {t['cache']} | {t['instances_per_s']} | "
        f"{t['answer_tokens_mean']} | {t['load_s']} | {t['warmup_s']} | {t['peak_gb']} | "
        f"{t['projected_test_set_s']} |"
    )


def markdown(results: dict[str, Any]) -> str:
    """The results table people read; rendered from the JSON so runs can be re-rendered."""
    lines = [
        *results_heading("Benchmark", results),
        "Random-weight full-size checkpoint: speeds and memory are real, outputs meaningless. "
        "`naive` is the plain HF + PEFT path of the anchor measurement, measured in the same run.",
        "",
    ]
    train = [r for r in results["runs"] if "train" in r]
    if train:
        lines += [
            "## Training (one pass of micro-batch 8 per step unless the setup says otherwise, "
            "AdamW step included)",
            "",
            "APA/MDD: batches of one task, as in the anchor table. Mixed: the run's own sampler "
            "over APA+MDD rows; the projection of 3 epochs (2,500 APA + 2,500 MDD each) scales "
            "the mixed step time. tok/s counts non-padding tokens.",
            "",
            "| setup | APA tok/s | MDD tok/s | mixed tok/s | mixed s/step | peak GB | "
            "3 epochs (min) |",
            "|---|---|---|---|---|---|---|",
            *(_train_row(r) for r in train),
            "",
        ]
    infer = [r for r in results["runs"] if "infer" in r]
    if infer:
        lines += [
            "## Inference: the stage itself (`run_shard`, shard writer included)",
            "",
            "Every instance decodes exactly its real target's tokens (o200k) plus `<|end|>`. "
            "Projection for the test set (2,500 APA + 2,500 MDD) through one worker = the "
            "one-off warm-up (static-cache compilation) + the steady rate; the model load is "
            "listed apart (once per checkpoint and worker).",
            "",
            "| setup | batch | cache | inst/s | answer tokens | load s | warm-up s | peak GB "
            "| test set (s) |",
            "|---|---|---|---|---|---|---|---|---|",
            *(_infer_row(r) for r in infer),
            "",
        ]
    return "\n".join(lines)
