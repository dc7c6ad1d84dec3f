"""Which (checkpoint, shard) items of a decode grid each GPU worker takes: one definition for
the inference jobs that decode them and the plan that sizes and prices the array."""

from __future__ import annotations

from pronlora.core.config import ConfigError


def worker_items(
    checkpoints: list[str], num_shards: int, worker: int, workers: int
) -> list[tuple[str, int]]:
    """The (checkpoint, shard) items of the shards x checkpoints grid that one worker decodes.

    A worker is one GPU: array task t of a job with G GPUs runs workers t*G .. t*G+G-1. The
    grid, shard by shard, is cut into ``workers`` contiguous blocks whose sizes differ by one at
    most, so a worker's items are mostly one shard of consecutive checkpoints: it loads the
    model once and swaps each next checkpoint in, keeping the shard's audio embeddings for a
    LoRA run (``Models``). One worker per shard (the plan's default), one per item, one
    multi-GPU job for the whole grid, and anything between all cover every item exactly once.
    """
    if not 0 <= worker < workers:
        raise ConfigError(f"worker {worker} outside 0..{workers - 1}")
    grid = [(c, s) for s in range(num_shards) for c in checkpoints]
    per, extra = divmod(len(grid), workers)
    start = worker * per + min(worker, extra)
    return grid[start : start + per + (worker < extra)]  # empty for a spare worker
