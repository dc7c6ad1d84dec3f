"""Length-grouped sampling: micro-batches of similar length, in a seeded, resumable order.

APA instances are ~3x longer than MDD ones; a random mix pads every MDD row to an APA length.
Indices are shuffled, cut into mega-batches (``mega_steps`` optimizer steps each), sorted by
length inside each and split into micro-batches; the micro-batches of a mega-batch are dealt
to its optimizer steps in turn, so every step sees both tasks in the same proportion.

Data parallelism: consecutive micro-batches go to ranks 0, 1, ..., W-1 in turn (accelerate's
round-robin batch sharding), and the ranks wait for the slowest at every micro-step. Inside
each optimizer step (``step_batches`` consecutive micro-batches, whatever the rank count) the
micro-batches are therefore ordered longest first: the W micro-batches of one micro-step have
neighbouring lengths, so no rank waits on another's APA batch with an MDD one. Which instances
make up each optimizer step does not depend on W, so 1, 2 and 4 GPUs train on the same
optimizer steps. The order depends only on (seed, epoch): a resumed run replays it exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class LengthGroupedSampler(Sampler[int]):
    def __init__(
        self,
        lengths: Sequence[float],
        micro_batch: int,
        step_batches: int,
        seed: int,
        mega_steps: int = 4,
    ) -> None:
        self.lengths = list(lengths)
        self.micro_batch = micro_batch
        self.step_batches = step_batches
        self.mega_batch = micro_batch * step_batches * mega_steps
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def micro_batches(self) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(len(self.lengths), generator=g).tolist()
        out: list[list[int]] = []
        for start in range(0, len(perm), self.mega_batch):
            mega = sorted(perm[start : start + self.mega_batch], key=lambda i: -self.lengths[i])
            micro = [mega[i : i + self.micro_batch] for i in range(0, len(mega), self.micro_batch)]
            # dealt to the mega-batch's optimizer steps in turn from a random start: each step
            # gets the same mix of long and short micro-batches
            n_steps = max(1, len(micro) // self.step_batches)
            first = int(torch.randint(n_steps, (1,), generator=g))
            steps: list[list[list[int]]] = [[] for _ in range(n_steps)]
            for j, m in enumerate(micro):
                steps[(j + first) % n_steps].append(m)
            for k in torch.randperm(n_steps, generator=g).tolist():
                out += sorted(steps[k], key=lambda m: -max(self.lengths[i] for i in m))
        return out

    def __iter__(self) -> Iterator[int]:
        return iter([i for m in self.micro_batches() for i in m])
