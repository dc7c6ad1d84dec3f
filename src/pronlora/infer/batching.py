"""Decode batches cut from the whole split (so shards and GPUs change no batch), and their
collation ahead of the GPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from pronlora.core.config import TrainConfig
from pronlora.model.audio_cache import AudioEmbeddingCache
from pronlora.model.collate import Collator, approx_prompt_tokens
from pronlora.model.load import Loaded


def generation_batches(rows: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    """Same-task batches of similar length, longest first (fail fast on memory); the order
    depends on the rows alone, not on the order of the file."""
    out = []
    for task in sorted({r["task"] for r in rows}):
        group = sorted(
            (r for r in rows if r["task"] == task),
            key=lambda r: (-approx_prompt_tokens(r), r["id"]),
        )
        out += [group[i : i + size] for i in range(0, len(group), size)]
    return out


def decode_batches(
    split_rows: list[dict[str, Any]], size: int, shard: int, num_shards: int
) -> list[list[dict[str, Any]]]:
    """One shard's decode batches: the whole split's ``generation_batches``, dealt out whole
    (batch i to shard i mod num_shards), so every shard count decodes the same batches."""
    return generation_batches(split_rows, size)[shard::num_shards]


def generation_collator(
    loaded: Loaded, cfg: TrainConfig, audio: AudioEmbeddingCache | None = None
) -> Collator:
    """Prompts, left-padded; with ``audio``, batches name their clips instead of carrying
    features (the language model then starts from the cached embeddings)."""
    return Collator(
        loaded.tokenizer,
        loaded.feature_extractor,
        max_length=cfg.max_length,
        with_labels=False,
        padding_side="left",
        clip_keys=audio is not None,
        clip_sizes=audio.rows if audio is not None else None,
    )


def prefetched(
    batches: list[list[dict[str, Any]]], collate: Collator, depth: int = 2
) -> Iterator[tuple[list[dict[str, Any]], dict[str, torch.Tensor]]]:
    """Collate (audio decoding, log-mel features) the next batches while the GPU decodes."""
    with ThreadPoolExecutor(max_workers=depth) as pool:
        pending = [pool.submit(collate, b) for b in batches[:depth]]
        for i, rows in enumerate(batches):
            batch = pending[i].result()
            if i + depth < len(batches):
                pending.append(pool.submit(collate, batches[i + depth]))
            yield rows, batch
