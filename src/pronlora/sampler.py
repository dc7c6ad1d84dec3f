"""Length-grouped sampling: micro-batches of similar length, in a seeded, resumable order.

APA instances are ~3x longer than MDD ones; a random mix pads every MDD row to an APA length.
Indices are shuffled, cut into mega-batches, sorted by length inside each, split into
micro-batches, and the micro-batches of a mega-batch are shuffled so every optimizer step still
sees both tasks. The order depends only on (seed, epoch), so a resumed run replays it exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class LengthGroupedSampler(Sampler[int]):
    def __init__(self, lengths: Sequence[float], micro_batch: int, mega_batch: int, seed: int):
        self.lengths = list(lengths)
        self.micro_batch = micro_batch
        self.mega_batch = max(mega_batch, micro_batch)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(len(self.lengths), generator=g).tolist()
        out: list[int] = []
        for start in range(0, len(perm), self.mega_batch):
            mega = sorted(perm[start : start + self.mega_batch], key=lambda i: -self.lengths[i])
            micro = [mega[i : i + self.micro_batch] for i in range(0, len(mega), self.micro_batch)]
            order = torch.randperm(len(micro), generator=g).tolist()
            for j in order:
                out.extend(micro[j])
        return iter(out)
