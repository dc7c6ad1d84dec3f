"""A predictions shard's files: its lines, read back after a kill, and the decoding settings
they were written under (a resume under other settings would mix two setups' answers).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from pronlora.core.atomic import write_json
from pronlora.core.config import TrainConfig
from pronlora.core.errors import DataError
from pronlora.core.layout import RunDir, read_json_file

log = logging.getLogger(__name__)


def shard_paths(
    run_dir: Path, checkpoint: str, shard: int, num_shards: int, split: str = "test"
) -> tuple[Path, Path]:
    lines, done, _ = RunDir(run_dir).shard(checkpoint, shard, num_shards, split)
    return lines, done


def read_written(path: Path) -> dict[str, dict[str, Any]]:
    """Lines already written; a last line cut off by a kill is removed from the file."""
    if not path.is_file():
        return {}
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    if keep < len(data):
        log.warning("%s: dropping a truncated last line (%d bytes)", path, len(data) - keep)
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
        try:
            os.ftruncate(fd, keep)
        finally:
            os.close(fd)
    done: dict[str, dict[str, Any]] = {}
    # split on b"\n" only: str.splitlines() also breaks at U+2028, U+0085 and others, which
    # JSON leaves unescaped in an answer's text
    for n, raw in enumerate(data[:keep].split(b"\n")[:-1], 1):
        try:
            row = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise DataError(
                f"{path}:{n}: corrupt prediction line (not the last line); delete the file "
                "to decode this shard again"
            ) from None
        if not isinstance(row, dict) or not isinstance(row.get("id"), str):
            raise DataError(f"{path}:{n}: a prediction line without an id")
        if row["id"] in done:
            raise DataError(
                f"{path}:{n}: id {row['id']} written twice (two writers?); delete the file "
                "to decode this shard again"
            )
        done[row["id"]] = row
    return done


def decoding_settings(cfg: TrainConfig) -> dict[str, Any]:
    """What decides a checkpoint's answers besides its weights, as each shard records it for
    the collector. ``batch_size`` is one: it changes no audio embedding (the split's groups),
    but it cuts the decode batches, and bf16 kernels round differently per batch shape (7-9 %
    of the answers of a barely trained model on an H100, bench/results/*-batch-invariance.md)."""
    return {
        "search": "greedy",
        "max_new_tokens_apa": cfg.infer.max_new_tokens_apa,
        "max_new_tokens_mdd": cfg.infer.max_new_tokens_mdd,
        "audio_encoder_batches": (
            f"the split's clips by duration, {cfg.infer.clips_per_encoder_batch} per batch"
        ),
        # nf4: into the dequantized base (model/dequantized_merge.py)
        "merge_adapter": cfg.infer.merge_adapter,
        "kv_cache": cfg.infer.cache,
        "compiled_prefill": cfg.infer.compile_prefill,
        "attn_implementation": cfg.attn_implementation,
        "batch_size": cfg.infer.batch_size,
    }


def check_settings(path: Path, settings: dict[str, Any], lines: Path, resuming: bool) -> None:
    """A shard's lines all come from one set of decoding settings: written (``path``) before
    the first line, compared on a resume (a pronlora that merges or caches otherwise, an edited
    run.json)."""
    if not resuming:
        write_json(path, settings)
        return
    if not path.is_file():
        raise DataError(
            f"{lines}: lines written without {path.name} (by an older pronlora?), so their "
            "decoding settings are unknown; delete the file to decode this shard again"
        )
    before = read_json_file(path)
    if not isinstance(before, dict):
        raise DataError(f"{path}: not a shard's decoding settings; delete {lines} to decode again")
    changed = sorted(k for k in settings.keys() | before.keys() if before.get(k) != settings.get(k))
    if changed:
        what = ", ".join(f"{k}: {before.get(k)!r} -> {settings.get(k)!r}" for k in changed)
        raise DataError(
            f"{lines}: its lines were decoded under other settings ({what}, {path}); delete "
            "the file to decode this shard again"
        )
