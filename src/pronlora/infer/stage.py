"""The inference stage: one shard of a split -> ``predictions/<checkpoint>/shard-I-of-N.jsonl``.

The model is loaded exactly as training built it (same quantization, the same speech-adapter
merge), then the checkpoint's trained weights are put into that structure; ``base`` keeps the
untrained adapter (the paper's "no training" row: the shipped model with its speech adapter).
Every computation is batched by the whole split, never by the shard: each clip is embedded once,
in the encoder batch ``audio_cache.clip_groups`` gives it, and its APA and MDD instances are
decoded from that embedding in the split's decode batches (``decode_batches``: per task, by
length, ``infer.batch_size`` each), which shards deal out whole. So the shard count and the
number of GPUs change no batch and no answer (the audio encoder attends to its batch's padding,
and bf16 kernels round differently per batch shape); ``infer.batch_size`` changes the decode
batches, hence the bf16 rounding of the language model, and is recorded with every shard.

Output is appended one line per instance and flushed per batch: a rerun skips what is written
and drops a last line cut off by a kill.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pronlora.core.atomic import jsonl_line, open_append, write_json
from pronlora.core.config import ConfigError, TrainConfig
from pronlora.core.layout import BASE_CHECKPOINT, PreparedDir, RunDir, read_json_file
from pronlora.core.lock import OutputLock
from pronlora.core.parse import parse_answer
from pronlora.infer.batching import decode_batches, generation_collator, prefetched
from pronlora.infer.generation import generate
from pronlora.infer.inputs import check_item, check_trained_on
from pronlora.infer.models import Models, ensure_run
from pronlora.infer.shard_file import check_settings, decoding_settings, read_written, shard_paths

log = logging.getLogger(__name__)

BASE = BASE_CHECKPOINT


def run_shard(
    run_dir: str | Path,
    checkpoint: str,
    prepared: str | Path,
    split: str = "test",
    shard: int = 0,
    num_shards: int = 1,
    config: str | TrainConfig | None = None,
    model: str | None = None,
    models: Models | None = None,
    decode_lengths: Mapping[str, int] | None = None,
    other_data: bool = False,
) -> dict[str, Any]:
    """Decode one shard into its predictions file (resuming what is written).

    ``models``: the worker's model holder, so consecutive shards of one checkpoint share a
    load; ``decode_lengths``: benchmarks only (see ExactLengths); ``other_data``: decode a
    prepared dir other than the one the run was trained on (named in the log and the shard's
    summary).
    """
    run_dir, prepared = Path(run_dir).resolve(), Path(prepared).resolve()
    check_item(run_dir, checkpoint, shard, num_shards)
    out_path, _, lock = RunDir(run_dir).shard(checkpoint, shard, num_shards, split)
    split_rows = PreparedDir(prepared).load_split(split)
    data_hash = check_trained_on(run_dir, prepared, other_data)
    with OutputLock(lock, f"predictions shard {out_path}"):
        return _write_shard(
            run_dir,
            checkpoint,
            split,
            shard,
            num_shards,
            split_rows,
            config,
            model,
            models=models or Models(),
            decode_lengths=decode_lengths,
            data={"prepared": str(prepared), "prepared_content_hash": data_hash},
        )


def _write_shard(
    run_dir: Path,
    checkpoint: str,
    split: str,
    shard: int,
    num_shards: int,
    split_rows: list[dict[str, Any]],
    config: str | TrainConfig | None,
    model: str | None,
    models: Models,
    decode_lengths: Mapping[str, int] | None,
    data: dict[str, Any],
) -> dict[str, Any]:
    out_path, done_path = shard_paths(run_dir, checkpoint, shard, num_shards, split)
    spec = ensure_run(run_dir, config, model)
    batches = decode_batches(split_rows, spec.cfg.infer.batch_size, shard, num_shards)
    rows = [r for b in batches for r in b]
    ids = {r["id"] for r in rows}
    written = read_written(out_path)
    stray = sorted(set(written) - ids)
    if stray:
        raise ConfigError(
            f"{out_path}: holds ids that are not in this shard: {stray[:5]} (decoded under "
            "another infer.batch_size or by an older pronlora? delete the file to decode again)"
        )
    # a batch partly written (a kill inside its write) is decoded whole again: the same batch
    # gives the same answers; only its missing lines are written
    todo = [b for b in batches if any(r["id"] not in written for r in b)]
    if not todo and done_path.is_file():  # its summary records the settings it was decoded with
        log.info("%s is complete (%d instances); nothing to do", out_path, len(rows))
        return read_json_file(done_path)
    check_settings(
        RunDir(run_dir).shard_settings(checkpoint, shard, num_shards, split),
        decoding_settings(spec.cfg),
        out_path,
        bool(written),
    )
    ckpt_dir = RunDir(run_dir).complete_checkpoint(checkpoint)
    log.info(
        "shard %d/%d of %s (%s): %d instances in %d batches, %d already written",
        shard,
        num_shards,
        split,
        checkpoint,
        len(rows),
        len(batches),
        len(written),
    )
    t0 = time.perf_counter()
    n_tokens = n_new = 0
    load_s = embed_s = 0.0
    if todo:
        loaded = models.get(spec, ckpt_dir)
        load_s = time.perf_counter() - t0  # 0 when this worker's last shard loaded it
        t0 = time.perf_counter()
        audio = models.embed_clips(spec.cfg, split_rows, {r["audio"] for b in todo for r in b})
        embed_s = time.perf_counter() - t0
        out_path.parent.mkdir(parents=True, exist_ok=True)
        # never through a link (one planted after the check above is refused here)
        with open_append(out_path) as fh:
            collate = generation_collator(loaded, spec.cfg, audio)
            for batch_rows, batch in prefetched(todo, collate):
                answers = generate(loaded, spec.cfg, batch_rows, batch, decode_lengths, audio)
                lines = []
                for row, (text, n) in zip(batch_rows, answers, strict=True):
                    if row["id"] in written:
                        continue
                    parsed, error = parse_answer(row["task"], text)
                    record = {
                        "id": row["id"],
                        "utt_id": row["utt_id"],
                        "task": row["task"],
                        "output": text,
                        "parsed": parsed,
                        "parse_error": error,
                    }
                    lines.append(jsonl_line(record))
                    n_tokens += n
                try:
                    fh.write("".join(lines))
                    fh.flush()
                    os.fsync(fh.fileno())
                except OSError as exc:  # a full disk names the shard (cli.run_job says more)
                    raise OSError(exc.errno, exc.strerror, str(out_path)) from None
                n_new += len(lines)
                elapsed = time.perf_counter() - t0
                log.info(
                    "%d/%d instances, %.2f inst/s, %.1f generated tok/s",
                    len(written) + n_new,
                    len(rows),
                    n_new / elapsed,
                    n_tokens / elapsed,
                )
    seconds = time.perf_counter() - t0
    final = read_written(out_path)
    missing = ids - set(final)
    if missing:
        raise RuntimeError(f"{out_path}: {len(missing)} ids missing after the run")
    counts = Counter(r["task"] for r in final.values())
    failures = Counter(r["task"] for r in final.values() if r["parse_error"])
    summary = {
        "checkpoint": checkpoint,
        "split": split,
        "shard": shard,
        "num_shards": num_shards,
        "instances": len(final),
        "by_task": {
            t: {
                "n": counts[t],
                "parse_failures": failures[t],
                "parse_failure_rate": round(failures[t] / counts[t], 4),
            }
            for t in sorted(counts)
        },
        "decoding": decoding_settings(spec.cfg),
        **data,
        "generated_this_run": n_new,
        "seconds": round(seconds, 2),  # embedding and decoding; the load is load_s
        "load_s": round(load_s, 2),
        "embed_s": round(embed_s, 2),
        "instances_per_s": round(n_new / seconds, 3) if todo and seconds else None,
        "tokens_per_s": round(n_tokens / seconds, 1) if todo and seconds else None,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }
    write_json(done_path, summary)
    for t, v in summary["by_task"].items():
        log.info(
            "%s parse failures: %d/%d (%.1f%%)",
            t,
            v["parse_failures"],
            v["n"],
            100 * v["parse_failure_rate"],
        )
    return summary
